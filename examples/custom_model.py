"""A plain `nn.Module`, not from transformers, trained by finch's Trainer: it only has to return a loss.

A bag-of-embeddings classifier over the tokenizer's ids: mean of the token embeddings of both sentences, then a
linear layer. Trainer needs nothing more than `forward(**batch) -> {"loss", "logits"}`.

    python examples/custom_model.py --quick
"""

import torch
from common import compute_metrics, parse_args, report, tokenized_mrpc
from torch import nn

from finch import Trainer, TrainingArguments


class BagOfEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 64, num_labels: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).to(torch.float32)  # padding does not count in the mean
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1)
        logits = self.classifier(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    tokenizer, tokenized = tokenized_mrpc(args)
    torch.manual_seed(args.seed)
    model = BagOfEmbeddings(len(tokenizer))
    training_args = TrainingArguments(
        output_dir=args.output_dir or "runs/custom_model", eval_strategy="epoch", save_strategy="no",
        per_device_train_batch_size=32, num_train_epochs=args.epochs * 3, learning_rate=3e-3, seed=args.seed,
        logging_steps=50)
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized["train"],
                      eval_dataset=tokenized["validation"], processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.train()
    metrics = trainer.evaluate()
    report("custom_model", {"accuracy": metrics["eval_accuracy"], "f1": metrics["eval_f1"],
                            "parameters": sum(p.numel() for p in model.parameters())})


if __name__ == "__main__":
    main()
