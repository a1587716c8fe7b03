"""The HuggingFace tutorial's Trainer workflow on GLUE MRPC, with finch: only the import changes.

    python examples/trainer_mrpc.py            # full MRPC, 3 epochs (~4 min on 2 CPU cores)
    python examples/trainer_mrpc.py --quick    # 200 rows, 1 epoch
"""

from common import compute_metrics, parse_args, pretrained_classifier, report, tokenized_mrpc
from transformers import DataCollatorWithPadding

from finch import Trainer, TrainingArguments


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    tokenizer, tokenized = tokenized_mrpc(args)
    model = pretrained_classifier(args)
    training_args = TrainingArguments(
        output_dir=args.output_dir or "runs/trainer_mrpc", eval_strategy="epoch", save_strategy="no",
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=32, num_train_epochs=args.epochs,
        learning_rate=args.lr, weight_decay=0.01, seed=args.seed, logging_steps=50,
        bf16=False if args.fp32 else None)
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized["train"],
                      eval_dataset=tokenized["validation"], data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer, compute_metrics=compute_metrics)
    trainer.train()
    predictions, label_ids, _ = trainer.predict(tokenized["validation"])
    print(f"predict: {predictions.shape[0]} rows of logits {predictions.shape[1:]}, labels {label_ids.shape}")
    metrics = trainer.evaluate()
    trainer.save_model(training_args.output_dir + "/model")
    report("trainer_mrpc", {"accuracy": metrics["eval_accuracy"], "f1": metrics["eval_f1"],
                            "steps": trainer.state.global_step, "model": training_args.output_dir + "/model"})


if __name__ == "__main__":
    main()
