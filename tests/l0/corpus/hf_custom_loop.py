"""Sequence-classification fine-tuning with a Hugging Face-style custom loop (no Trainer, no accelerate).

L0 corpus file: a realistic script with the mistakes such scripts have in the wild.
"""
# expect-file: OBS003, PRC005, ADV011
import argparse
import logging
import math
import os

import torch
from datasets import load_dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          get_linear_schedule_with_warmup, set_seed)

logger = logging.getLogger(__name__)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name_or_path", default="bert-base-uncased")
    parser.add_argument("--task_name", default="mrpc")
    parser.add_argument("--per_device_train_batch_size", type=int, default=32)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--num_train_epochs", type=int, default=3)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--num_warmup_steps", type=int, default=0)
    parser.add_argument("--logging_steps", type=int, default=50)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--output_dir", default="out")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def main():
    args = parse_args()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(message)s", level=logging.INFO)
    set_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    raw_datasets = load_dataset("glue", args.task_name)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=2)

    def preprocess_function(examples):
        return tokenizer(examples["sentence1"], examples["sentence2"], truncation=True, max_length=128)

    processed = raw_datasets.map(preprocess_function, batched=True,
                                 remove_columns=raw_datasets["train"].column_names)
    train_dataset, eval_dataset = processed["train"], processed["validation"]
    data_collator = DataCollatorWithPadding(tokenizer)

    train_dataloader = DataLoader(  # expect: DAT001, DAT002
        train_dataset, shuffle=True, collate_fn=data_collator, batch_size=args.per_device_train_batch_size)
    eval_dataloader = DataLoader(  # expect: DAT002
        eval_dataset, collate_fn=data_collator, batch_size=args.per_device_eval_batch_size)

    no_decay = ["bias", "LayerNorm.weight"]
    optimizer_grouped_parameters = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=args.learning_rate)  # expect: DEV004, OPT006

    # New special tokens for the task markers: the embedding matrix grows to match.
    tokenizer.add_special_tokens({"additional_special_tokens": ["[E1]", "[/E1]"]})
    model.resize_token_embeddings(len(tokenizer))  # expect: OPT004
    model.to(device)

    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=args.num_warmup_steps,
                                                   num_training_steps=max_train_steps)

    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(train_dataset)}, total optimization steps = {max_train_steps}")
    progress_bar = tqdm(range(max_train_steps))
    completed_steps = 0

    for epoch in range(args.num_train_epochs):
        model.train()
        total_loss = 0
        for step, batch in enumerate(train_dataloader):
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = model(**batch)
            loss = outputs.loss
            total_loss += loss  # expect: ADV002
            loss = loss / args.gradient_accumulation_steps
            loss.backward()
            if step % args.gradient_accumulation_steps == 0 or step == len(train_dataloader) - 1:
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                progress_bar.update(1)
                completed_steps += 1

                if completed_steps % args.logging_steps == 0:
                    logger.info(f"step {completed_steps}: loss {loss.item() * args.gradient_accumulation_steps:.4f} "
                                f"lr {lr_scheduler.get_last_lr()[0]:.3e}")
                if completed_steps % args.checkpointing_steps == 0:
                    output_dir = os.path.join(args.output_dir, f"step_{completed_steps}")
                    model.save_pretrained(output_dir)
                    tokenizer.save_pretrained(output_dir)
            if completed_steps >= max_train_steps:
                break

        model.eval()
        correct, seen = 0, 0
        for batch in eval_dataloader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                outputs = model(**batch)
            predictions = outputs.logits.argmax(dim=-1)
            correct += (predictions == batch["labels"]).sum().item()
            seen += batch["labels"].numel()
        logger.info(f"epoch {epoch}: accuracy {correct / seen:.4f} "
                    f"train_loss {total_loss.item() / len(train_dataloader):.4f}")

    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
