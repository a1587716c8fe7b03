"""`finch.load_metric`: evaluate's names, keys and interface; scikit-learn's and scipy's numbers."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from finch import load_metric
from finch.errors import ConfigError, UnknownArgumentError

RNG = np.random.default_rng(0)
BINARY_PREDICTIONS, BINARY_REFERENCES = RNG.integers(0, 2, 50), RNG.integers(0, 2, 50)
CLASS_PREDICTIONS, CLASS_REFERENCES = RNG.integers(0, 3, 60), RNG.integers(0, 3, 60)
SCORES = RNG.normal(size=40)
SCORE_REFERENCES = SCORES + RNG.normal(scale=0.8, size=40)


def test_the_tutorials_glue_mrpc_metric():
    metric = load_metric("glue", "mrpc")
    result = metric.compute(predictions=BINARY_PREDICTIONS, references=BINARY_REFERENCES)
    assert result == {"accuracy": sk.accuracy_score(BINARY_REFERENCES, BINARY_PREDICTIONS),
                      "f1": sk.f1_score(BINARY_REFERENCES, BINARY_PREDICTIONS)}
    assert all(type(value) is float for value in result.values())


@pytest.mark.parametrize("task", ["sst2", "mnli", "mnli_mismatched", "mnli_matched", "qnli", "rte", "wnli", "hans",
                                  "qqp", "cola", "stsb", "mrpc"])
def test_every_glue_task_has_evaluates_keys_and_sklearns_numbers(task):
    metric = load_metric("glue", task)
    if task == "stsb":  # evaluate casts STS-B's scores to float32
        predictions, references = SCORES.astype(np.float32), SCORE_REFERENCES.astype(np.float32)
        expected = {"pearson": float(stats.pearsonr(predictions, references)[0]),
                    "spearmanr": float(stats.spearmanr(predictions, references)[0])}
    else:
        predictions, references = CLASS_PREDICTIONS % 2, CLASS_REFERENCES % 2
        expected = {"accuracy": sk.accuracy_score(references, predictions)}
        if task in ("mrpc", "qqp"):
            expected["f1"] = sk.f1_score(references, predictions)
        if task == "cola":
            expected = {"matthews_correlation": sk.matthews_corrcoef(references, predictions)}
    assert metric.compute(predictions=predictions, references=references) == expected


def test_single_metrics_with_their_options():
    p, r = CLASS_PREDICTIONS, CLASS_REFERENCES
    assert load_metric("accuracy").compute(predictions=p, references=r) == {"accuracy": sk.accuracy_score(r, p)}
    assert load_metric("accuracy").compute(predictions=p, references=r, normalize=False) == \
        {"accuracy": float(sk.accuracy_score(r, p, normalize=False))}
    for name, function in (("f1", sk.f1_score), ("precision", sk.precision_score), ("recall", sk.recall_score)):
        for average in ("macro", "micro", "weighted"):
            assert load_metric(name).compute(predictions=p, references=r, average=average) == \
                {name: function(r, p, average=average)}
        assert load_metric(name).compute(predictions=BINARY_PREDICTIONS, references=BINARY_REFERENCES) == \
            {name: function(BINARY_REFERENCES, BINARY_PREDICTIONS)}
        per_class = load_metric(name).compute(predictions=p, references=r, average=None)[name]
        np.testing.assert_array_equal(per_class, function(r, p, average=None))
    assert load_metric("matthews_correlation").compute(predictions=p, references=r) == \
        {"matthews_correlation": sk.matthews_corrcoef(r, p)}
    x, y = SCORES.astype(np.float32), SCORE_REFERENCES.astype(np.float32)
    assert load_metric("pearsonr").compute(predictions=x, references=y) == {"pearsonr": stats.pearsonr(y, x)[0]}
    assert load_metric("spearmanr").compute(predictions=x, references=y) == {"spearmanr": stats.spearmanr(y, x)[0]}
    with_p = load_metric("pearsonr").compute(predictions=x, references=y, return_pvalue=True)
    assert set(with_p) == {"pearsonr", "p-value"} and with_p["p-value"] == pytest.approx(stats.pearsonr(y, x)[1])


def test_batches_accumulate_until_compute_as_in_evaluate():
    metric = load_metric("f1")
    for start in range(0, 60, 25):
        metric.add_batch(predictions=CLASS_PREDICTIONS[start:start + 25], references=CLASS_REFERENCES[start:start + 25])
    metric.add(prediction=1, reference=2)
    expected = sk.f1_score(np.append(CLASS_REFERENCES, 2), np.append(CLASS_PREDICTIONS, 1), average="macro")
    assert metric.compute(average="macro") == {"f1": expected}
    with pytest.raises(ValueError, match="nothing to compute"):  # compute() started afresh
        metric.compute()


def test_in_a_tutorial_compute_metrics():
    from transformers import EvalPrediction

    metric = load_metric("glue", "mrpc")

    def compute_metrics(eval_preds):
        logits, labels = eval_preds
        predictions = np.argmax(logits, axis=-1)
        return metric.compute(predictions=predictions, references=labels)

    logits = RNG.normal(size=(50, 2))
    result = compute_metrics(EvalPrediction(predictions=logits, label_ids=BINARY_REFERENCES))
    assert result["f1"] == sk.f1_score(BINARY_REFERENCES, logits.argmax(-1))


def test_mistakes_name_what_exists_and_the_fix():
    with pytest.raises(ConfigError, match=r"no metric 'bleu'.*accuracy, f1, glue.*evaluate.load\('bleu'\)"):
        load_metric("bleu")
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        load_metric("acuracy")
    with pytest.raises(ConfigError, match=r"did you mean 'mrpc'.*cola, stsb, mrpc"):
        load_metric("glue", "mrcp")
    with pytest.raises(ConfigError, match="GLUE's tasks"):
        load_metric("glue")
    with pytest.raises(UnknownArgumentError, match="takes no averge.*average="):
        load_metric("f1").compute(predictions=[0, 1], references=[0, 1], averge="macro")
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        load_metric("accuracy").compute(predictions=[0, 1], references=[0, 1, 1])
    with pytest.raises(ValueError, match="argmax"):  # logits where class ids belong
        load_metric("accuracy").compute(predictions=[0.2, 0.7], references=[0, 1])
    assert load_metric("evaluate-metric/accuracy").compute(predictions=[1], references=[1]) == {"accuracy": 1.0}
