"""Kaggle-notebook-style image classifier: CFG class, K folds, a timm backbone in pure fp16 to fit
a bigger batch, gradient accumulation and torch.compile.

L0 corpus file: a realistic script with the mistakes such scripts have in the wild.
"""
# expect-file: OBS003, OBS004
import os
import random

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from augment import train_transforms, valid_transforms  # albumentations pipelines
from io_utils import read_image


class CFG:
    model_name = "tf_efficientnet_b3_ns"
    img_size = 512
    batch_size = 16
    accum_steps = 4
    epochs = 8
    lr = 3e-4
    weight_decay = 1e-2
    n_folds = 5
    num_workers = 8
    seed = 42
    out_dir = "models"


def seed_everything(seed):
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class LeafDataset(Dataset):
    def __init__(self, df, transforms):
        self.paths, self.labels, self.transforms = df.path.values, df.label.values, transforms

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = self.transforms(image=read_image(self.paths[i]))["image"]
        return image, torch.tensor(self.labels[i])


class LeafModel(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.backbone = timm.create_model(CFG.model_name, pretrained=True, num_classes=0)
        self.fc = nn.Linear(self.backbone.num_features, n_classes)

    def forward(self, x):
        feats = self.backbone(x)
        feats = F.dropout(feats, 0.3)  # expect: ADV016
        return self.fc(feats)


def train_one_epoch(model, loader, optimizer, criterion):
    model.train()
    pbar = tqdm(enumerate(loader), total=len(loader))
    for step, (images, labels) in pbar:
        images, labels = images.cuda().half(), labels.cuda()
        logits = model(images)
        loss = criterion(logits.float(), labels)
        loss.backward()  # expect: ADV008
        if (step + 1) % CFG.accum_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
        pbar.set_postfix(loss=loss.item())  # expect: ADV003


def valid_one_epoch(model, loader):  # expect: ADV006
    preds, targets = [], []
    with torch.no_grad():
        for images, labels in loader:
            logits = model(images.cuda().half())
            preds.append(logits.argmax(1).cpu())
            targets.append(labels)
    return (torch.cat(preds) == torch.cat(targets)).float().mean().item()


def run_fold(df, fold):
    train_df, valid_df = df[df.fold != fold], df[df.fold == fold]
    train_loader = DataLoader(LeafDataset(train_df, train_transforms(CFG.img_size)),  # expect: ADV012
                              batch_size=CFG.batch_size, shuffle=True, num_workers=CFG.num_workers,
                              pin_memory=True, persistent_workers=True)
    valid_loader = DataLoader(LeafDataset(valid_df, valid_transforms(CFG.img_size)),
                              batch_size=2 * CFG.batch_size, shuffle=False, num_workers=CFG.num_workers,
                              pin_memory=True, persistent_workers=True)

    model = LeafModel(n_classes=df.label.nunique()).cuda().half()  # expect: PRC003
    optimizer = torch.optim.AdamW(model.parameters(), lr=CFG.lr, weight_decay=CFG.weight_decay,  # expect: OPT003
                                  fused=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model = torch.compile(model)

    best = 0.0
    for epoch in range(CFG.epochs):
        train_one_epoch(model, train_loader, optimizer, criterion)
        acc = valid_one_epoch(model, valid_loader)
        print(f"fold {fold} epoch {epoch}: valid acc {acc:.4f}")
        if acc > best:
            best = acc
            torch.save(model.state_dict(), os.path.join(CFG.out_dir, f"{CFG.model_name}_fold{fold}.pth"))
    return best


if __name__ == "__main__":
    seed_everything(CFG.seed)
    torch.backends.cudnn.benchmark = True
    df = pd.read_csv("train.csv")
    skf = StratifiedKFold(n_splits=CFG.n_folds, shuffle=True, random_state=CFG.seed)
    for fold, (_, val_idx) in enumerate(skf.split(df, df.label)):
        df.loc[val_idx, "fold"] = fold
    scores = [run_fold(df, fold) for fold in range(CFG.n_folds)]
    print(f"CV accuracy: {np.mean(scores):.4f} +/- {np.std(scores):.4f}")
