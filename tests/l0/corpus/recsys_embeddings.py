"""Neural collaborative filtering on MovieLens-25M: big sparse embedding tables + a dense MLP tower.

L0 corpus file: a realistic research script with the mistakes such scripts have in the wild.
"""
# expect-file: OBS001, OBS002, OBS003, OBS004, OBS006, OBS008, ADV011
import argparse
import json
import os
import random

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset


class NCF(nn.Module):
    def __init__(self, n_users, n_items, n_genres, dim=64, hidden=(256, 128, 64)):
        super().__init__()
        self.user_emb = nn.Embedding(n_users, dim, sparse=True)
        self.item_emb = nn.Embedding(n_items, dim, sparse=True)
        self.genre_emb = nn.EmbeddingBag(n_genres, dim, mode="mean", sparse=True)
        layers, width = [], 3 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(0.1)]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def sparse_parameters(self):
        return [self.user_emb.weight, self.item_emb.weight, self.genre_emb.weight]

    def dense_parameters(self):
        return list(self.mlp.parameters())

    def forward(self, users, items, genres, genre_offsets):
        x = torch.cat([self.user_emb(users), self.item_emb(items), self.genre_emb(genres, genre_offsets)], dim=1)
        return self.mlp(x).squeeze(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data/ml-25m")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda")

    # ratings.npy: (25M, 3) int64 rows of (user, item, label), sorted by user id; ~600 MB
    ratings = np.load(os.path.join(args.data_dir, "ratings.npy"))  # expect: ADV014
    item_genres = np.load(os.path.join(args.data_dir, "item_genres.npy"), mmap_mode="r")
    n_users, n_items = int(ratings[:, 0].max()) + 1, int(ratings[:, 1].max()) + 1
    split = int(0.9 * len(ratings))
    train = TensorDataset(torch.from_numpy(ratings[:split]))
    val = TensorDataset(torch.from_numpy(ratings[split:]))

    train_loader = DataLoader(train, batch_size=args.batch_size, num_workers=4,  # expect: DAT005
                              pin_memory=True, persistent_workers=True)
    val_loader = DataLoader(val, batch_size=4 * args.batch_size, num_workers=4,
                            pin_memory=True, persistent_workers=True)

    model = NCF(n_users, n_items, n_genres=20).to(device)
    dense_optimizer = torch.optim.Adam(model.dense_parameters(), lr=args.lr)  # expect: OPT006
    sparse_optimizer = torch.optim.SparseAdam(model.sparse_parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(dense_optimizer, lambda s: min(1.0, (s + 1) / 1000))  # warmup
    criterion = nn.BCEWithLogitsLoss()

    def genres_for(items):
        rows = [torch.from_numpy(np.asarray(item_genres[i])) for i in items.tolist()]
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
        return torch.cat(rows).to(device, non_blocking=True), offsets.to(device, non_blocking=True)

    history, best_auc = [], 0.0
    for epoch in range(args.epochs):
        model.train()
        train_scores, train_labels = [], []
        for (batch,) in train_loader:
            batch = batch.to(device, non_blocking=True)
            users, items, labels = batch[:, 0], batch[:, 1], batch[:, 2].float()
            genres, offsets = genres_for(items)

            logits = model(users, items, genres, offsets)
            loss = criterion(logits, labels)
            dense_optimizer.zero_grad()
            sparse_optimizer.zero_grad()
            loss.backward()
            scheduler.step()  # expect: OPT002
            dense_optimizer.step()
            sparse_optimizer.step()
            model.user_emb.weight.data.renorm_(2, 0, args.max_norm)  # expect: ADV013
            train_scores.append(torch.sigmoid(logits).detach().cpu())  # expect: ADV003
            train_labels.append(labels.cpu())  # expect: ADV003

        model.eval()
        scores, labels_all = [], []
        with torch.no_grad():
            for (batch,) in val_loader:
                batch = batch.to(device, non_blocking=True)
                genres, offsets = genres_for(batch[:, 1])
                scores.append(torch.sigmoid(model(batch[:, 0], batch[:, 1], genres, offsets)).cpu())
                labels_all.append(batch[:, 2].cpu())
        val_auc = roc_auc_score(torch.cat(labels_all).numpy(), torch.cat(scores).numpy())
        train_auc = roc_auc_score(torch.cat(train_labels).numpy(), torch.cat(train_scores).numpy())
        history.append({"epoch": epoch, "train_auc": train_auc, "val_auc": val_auc})
        best_auc = max(best_auc, val_auc)

    torch.save(model.state_dict(), os.path.join(args.data_dir, "ncf.pt"))
    with open(os.path.join(args.data_dir, "history.json"), "w") as f:
        json.dump({"history": history, "best_auc": best_auc}, f)


if __name__ == "__main__":
    main()
