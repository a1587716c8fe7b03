"""Fine-tune, save with label names, then classify new sentence pairs with `transformers.pipeline`.

    python examples/pipeline_inference.py --quick
"""

from common import parse_args, pretrained_classifier, report, tokenized_mrpc
from transformers import pipeline

from finch import Trainer, TrainingArguments


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    tokenizer, tokenized = tokenized_mrpc(args)
    model = pretrained_classifier(args)
    output_dir = args.output_dir or "runs/pipeline_inference"
    training_args = TrainingArguments(output_dir=output_dir, save_strategy="no", num_train_epochs=args.epochs,
                                      per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                                      weight_decay=0.01, seed=args.seed, logging_steps=50)
    trainer = Trainer(model=model, args=training_args, train_dataset=tokenized["train"], processing_class=tokenizer)
    trainer.train()
    trainer.save_model(f"{output_dir}/model")  # label names come from the dataset's ClassLabel

    classify = pipeline("text-classification", model=f"{output_dir}/model")
    pairs = [("The cat sat on the mat.", "A cat was sitting on the mat."),
             ("Stocks fell sharply on Monday.", "The company announced a new chief executive.")]
    answers = [classify({"text": first, "text_pair": second}) for first, second in pairs]
    for (first, second), answer in zip(pairs, answers):
        print(f"{answer['label']:>15} {answer['score']:.3f}  {first} | {second}")
    report("pipeline_inference", {"labels": [a["label"] for a in answers], "scores": [a["score"] for a in answers]})


if __name__ == "__main__":
    main()
