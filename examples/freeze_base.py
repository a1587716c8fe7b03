"""Train only the classification head: freeze the pretrained encoder, a fast baseline with few trainable weights.

    python examples/freeze_base.py --quick
"""

from common import compute_metrics, parse_args, pretrained_classifier, report, tokenized_mrpc

from finch import Trainer, TrainingArguments


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    tokenizer, tokenized = tokenized_mrpc(args)
    model = pretrained_classifier(args)
    for parameter in model.base_model.parameters():  # the encoder; the head (classifier) stays trainable
        parameter.requires_grad = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"trainable parameters: {trainable:,} of {total:,}")
    encoder_before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    training_args = TrainingArguments(
        output_dir=args.output_dir or "runs/freeze_base", eval_strategy="epoch", save_strategy="no",
        per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs, learning_rate=1e-3,
        seed=args.seed, logging_steps=50)
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized["train"],
                      eval_dataset=tokenized["validation"], processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.train()
    metrics = trainer.evaluate()
    unchanged = all((model.base_model.state_dict()[k] == v).all() for k, v in encoder_before.items())
    report("freeze_base", {"accuracy": metrics["eval_accuracy"], "f1": metrics["eval_f1"], "trainable": trainable,
                           "total": total, "encoder_unchanged": bool(unchanged)})


if __name__ == "__main__":
    main()
