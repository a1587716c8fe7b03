"""Class imbalance: weighted cross-entropy through `compute_loss_func`, with weights from the label counts.

MRPC is 67% paraphrases; "balanced" weights (n_examples / (n_classes * n_class)) make each class count equally.

    python examples/class_imbalance.py --quick
"""

import numpy as np
import torch
from common import compute_metrics, parse_args, pretrained_classifier, report, tokenized_mrpc

from finch import Trainer, TrainingArguments


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    tokenizer, tokenized = tokenized_mrpc(args)
    counts = np.bincount(np.asarray(tokenized["train"]["label"]), minlength=2)
    weights = torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)
    print(f"label counts {counts.tolist()} -> class weights {[round(w, 3) for w in weights.tolist()]}")

    def weighted_loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"].float()
        return torch.nn.functional.cross_entropy(logits, labels, weight=weights.to(logits.device))

    model = pretrained_classifier(args)
    training_args = TrainingArguments(
        output_dir=args.output_dir or "runs/class_imbalance", eval_strategy="epoch", save_strategy="no",
        per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs, learning_rate=args.lr,
        weight_decay=0.01, seed=args.seed, logging_steps=50)
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized["train"],
                      eval_dataset=tokenized["validation"], processing_class=tokenizer,
                      compute_metrics=compute_metrics, compute_loss_func=weighted_loss)
    trainer.train()
    predictions = trainer.predict(tokenized["validation"]).predictions.argmax(-1)
    metrics = trainer.evaluate()
    report("class_imbalance", {"accuracy": metrics["eval_accuracy"], "f1": metrics["eval_f1"],
                               "class_weights": weights.tolist(),
                               "predicted_share_positive": float((predictions == 1).mean())})


if __name__ == "__main__":
    main()
