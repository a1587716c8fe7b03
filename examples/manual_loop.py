"""The same MRPC fine-tune as trainer_mrpc.py written by hand, with finch's building blocks where they help.

finch gives the length-grouped batch order, the optimizer's parameter groups and schedule, and the metrics; the
rest is the plain PyTorch loop the tutorials teach. With the same seed and --fp32 it ends with the very weights
trainer_mrpc.py ends with, bit for bit.

    python examples/manual_loop.py --quick
"""

import math

import numpy as np
import torch
from common import compute_metrics, parse_args, report, tokenized_mrpc
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed
from transformers.trainer_utils import EvalPrediction

from finch import TrainingArguments
from finch.data.batching import epoch_batches, eval_batches, padding_multiple
from finch.distributed.runtime import choose_precision
from finch.training.dropout import fast_dropout
from finch.training.optim import create_optimizer, create_scheduler


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}")
    tokenizer, tokenized = tokenized_mrpc(args)
    columns = ["input_ids", "token_type_ids", "attention_mask", "label"]
    train = tokenized["train"].select_columns(columns).to_list()
    validation = tokenized["validation"].select_columns(columns).to_list()
    precision = choose_precision(False if args.fp32 else None, None, device)  # bf16 where the hardware is fast
    # finch's padding rule: lengths rounded to 8 on CUDA and under bf16 on the CPU (fewer kernel shapes), else exact
    multiple = padding_multiple(None, device.type, compiled=False, bf16=precision.name == "bf16")
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)

    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2).to(device)
    recipe = TrainingArguments(output_dir="unused", learning_rate=args.lr, weight_decay=0.01,
                               per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total_steps = math.ceil(args.epochs * steps_per_epoch)
    optimizer = create_optimizer(model, recipe)  # fused AdamW, no decay on biases and LayerNorm
    scheduler = create_scheduler(optimizer, recipe, total_steps)  # linear decay to 0
    lengths = [len(row["input_ids"]) for row in train]

    set_seed(args.seed)
    step = 0
    for epoch in range(math.ceil(args.epochs)):
        model.train()
        for indices in epoch_batches(len(train), args.batch_size, args.seed, epoch, "group_by_length", lengths):
            batch = {k: v.to(device) for k, v in collate([train[i] for i in indices]).items()}
            # finch's dropout on the CPU: same distribution as torch's, about 2.5x cheaper (torch's own on CUDA)
            with precision.autocast(device), fast_dropout(model, device.type == "cpu"):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step >= total_steps:
                break
        metrics = evaluate(model, validation, collate, device, precision)
        print(
            f"epoch {epoch + 1}: loss {loss.item():.4f} | eval accuracy {metrics['accuracy']:.4f} "
            f"f1 {metrics['f1']:.4f}"
        )

    output_dir = (args.output_dir or "runs/manual_loop") + "/model"
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    report("manual_loop", {**metrics, "steps": step, "model": output_dir})


def evaluate(model, rows, collate, device, precision) -> dict[str, float]:
    """model.eval(), no gradients, batches longest first; logits put back in row order for the metrics."""
    model.eval()
    logits = np.zeros((len(rows), 2), dtype=np.float32)
    with torch.no_grad():
        for indices in eval_batches(len(rows), 32, [len(row["input_ids"]) for row in rows]):
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in indices]).items()}
            batch.pop("labels")
            with precision.autocast(device):
                logits[indices] = model(**batch).logits.float().cpu().numpy()
    labels = np.array([row["label"] for row in rows])
    return compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))


if __name__ == "__main__":
    main()
