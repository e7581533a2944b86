"""Transfer learning: an ImageNet ResNet-50 with a frozen backbone and a new classification head,
then layer4 unfrozen for the last epochs.

L0 corpus file: a realistic script with the mistakes such scripts have in the wild.
"""
# expect-file: OBS003, ADV010, ADV011
import argparse
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms


class Head(nn.Module):
    def __init__(self, in_features, num_classes, p=0.3):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 512)
        self.fc2 = nn.Linear(512, num_classes)
        self.p = p

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=self.p, training=self.training)
        return F.softmax(self.fc2(x), dim=1)  # expect: ADV004


def build_loaders(args):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                 transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_ds = datasets.ImageFolder(f"{args.data}/train", train_tf)
    val_ds = datasets.ImageFolder(f"{args.data}/val", val_tf)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                              pin_memory=True, persistent_workers=True)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,  # expect: DAT004
                            pin_memory=True, persistent_workers=True)
    return train_loader, val_loader, len(train_ds.classes)


def train_one_epoch(model, loader, criterion, optimizer, device, epoch, print_freq):
    model.train()
    end = time.time()
    for i, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad()
        with torch.cuda.amp.autocast():  # expect: PRC001
            outputs = model(images)
            loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        if i % print_freq == 0:
            batch_time = time.time() - end
            print(f"epoch {epoch} [{i}/{len(loader)}] loss {loss.item():.4f} "
                  f"lr {optimizer.param_groups[-1]['lr']:.2e} {batch_time / print_freq:.3f}s/batch")
            end = time.time()


def validate(model, loader, device):
    model.eval()
    correct = total = 0
    with torch.no_grad(), torch.cuda.amp.autocast():
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            preds = model(images).argmax(dim=1)
            correct += (preds == labels).sum().item()
            total += labels.size(0)
    return correct / total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="data/flowers")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--unfreeze-at", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--print-freq", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda")

    train_loader, val_loader, num_classes = build_loaders(args)
    model = models.resnet50(weights=models.ResNet50_Weights.IMAGENET1K_V2)
    for p in model.parameters():
        p.requires_grad = False
    model.fc = Head(model.fc.in_features, num_classes)
    model = model.to(device)

    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=args.lr, momentum=0.9)
    scheduler = CosineAnnealingLR(optimizer, T_max=args.epochs)  # expect: OPT005

    best_acc = 0.0
    for epoch in range(args.epochs):
        if epoch == args.unfreeze_at:
            for p in model.layer4.parameters():
                p.requires_grad = True
            optimizer = torch.optim.SGD([
                {"params": model.layer4.parameters(), "lr": args.lr * 0.1},
                {"params": model.fc.parameters()},
            ], lr=args.lr, momentum=0.9)
        train_one_epoch(model, train_loader, criterion, optimizer, device, epoch, args.print_freq)
        acc = validate(model, val_loader, device)
        scheduler.step()
        print(f"epoch {epoch}: val acc {acc:.4f}")
        if acc > best_acc:
            best_acc = acc
            torch.save(model, "best_model.pth")  # expect: ADV007


if __name__ == "__main__":
    main()
