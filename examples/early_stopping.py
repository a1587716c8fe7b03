"""Early stopping: evaluate every N steps, stop when F1 has not improved for `patience` evaluations, keep the best.

    python examples/early_stopping.py --quick
"""

from common import compute_metrics, parse_args, pretrained_classifier, report, tokenized_mrpc

from finch import EarlyStoppingCallback, Trainer, TrainingArguments


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], **{"--patience": {"type": int, "default": 2},
                                                  "--eval-steps": {"type": int, "default": 100}})
    if args.quick:
        args.epochs, args.eval_steps, args.lr = 4, 10, 2e-3  # a high rate overfits 200 rows fast: stopping shows
    tokenizer, tokenized = tokenized_mrpc(args)
    model = pretrained_classifier(args)
    training_args = TrainingArguments(
        output_dir=args.output_dir or "runs/early_stopping", eval_strategy="steps", eval_steps=args.eval_steps,
        save_strategy="steps", save_steps=args.eval_steps, save_total_limit=1, load_best_model_at_end=True,
        metric_for_best_model="f1", per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=args.lr, weight_decay=0.01, seed=args.seed, logging_steps=args.eval_steps)
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized["train"],
                      eval_dataset=tokenized["validation"], processing_class=tokenizer, compute_metrics=compute_metrics,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=args.patience)])
    trainer.train()
    final = trainer.evaluate()
    planned = trainer.state.max_steps
    print(f"stopped at step {trainer.state.global_step} of {planned}; best f1 {trainer.state.best_metric:.4f} "
          f"at {trainer.state.best_model_checkpoint} (loaded)")
    report("early_stopping", {"stopped_at": trainer.state.global_step, "max_steps": planned,
                              "best_f1": trainer.state.best_metric, "final_f1": final["eval_f1"],
                              "f1": final["eval_f1"], "accuracy": final["eval_accuracy"]})


if __name__ == "__main__":
    main()
