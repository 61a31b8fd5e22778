import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from dataassess.corpus import Document
from dataassess.evalsets import build_eval_set, rolling_windows
from dataassess.merge import LinearMerge, group_weights, linear_merge, revolving_door, running_merges
from dataassess.scoring import score_model
from dataassess.train import resolve_device
from dataassess.weights import save_state, save_weights
from tests.conftest import demo_docs


def perturbed_models(seed, tmp_path, n=3):
    """Real seed weights, each moved by a different random direction, saved as unit models are."""
    paths = []
    for i in range(n):
        model = seed.load_model()
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        path = tmp_path / f"m{i}.safetensors"
        save_weights(model, path)
        paths.append(path)
    return paths


def test_merged_weights_equal_the_naive_average(seed, tmp_path):
    paths = perturbed_models(seed, tmp_path)
    states = [load_file(str(p)) for p in paths]
    merged = linear_merge(paths)
    for key in states[0]:
        naive = torch.stack([s[key].double() for s in states]).mean(0)
        assert torch.allclose(merged[key].double(), naive, atol=1e-6), key
    weights = [0.5, 0.3, 0.2]
    weighted = linear_merge(paths, [5, 3, 2])  # normalized
    for key in states[0]:
        naive = sum(w * s[key].double() for w, s in zip(weights, states))
        assert torch.allclose(weighted[key].double(), naive, atol=1e-6), key


def test_tied_embeddings_survive_a_merge(seed, tmp_path):
    paths = perturbed_models(seed, tmp_path, 2)
    model = seed.load_model()
    linear_merge(paths, out=model.state_dict())
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    a, b = load_file(str(paths[0])), load_file(str(paths[1]))
    key = next(k for k in ("lm_head.weight", "transformer.wte.weight") if k in a)
    expected = (a[key] + b[key]) / 2
    assert torch.allclose(model.lm_head.weight, expected, atol=1e-6)


def test_merge_into_model_parameters_across_small_blocks(seed, tmp_path):
    paths = perturbed_models(seed, tmp_path, 3)
    expected = linear_merge(paths, [1, 2, 3])
    model = seed.load_model()
    out = linear_merge(paths, [1, 2, 3], out=model.state_dict(), block=1000)  # blocks straddle tensor boundaries
    for key, t in expected.items():
        assert torch.allclose(out[key], t, atol=1e-6), key
        assert torch.allclose(model.state_dict()[key], t, atol=1e-6), key


def test_bf16_models_merge_in_float32_and_cast_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    states = [
        {"a": torch.randn(300, 7, generator=g).bfloat16(), "b": torch.randn(5, generator=g).bfloat16()}
        for _ in range(3)
    ]
    paths = []
    for i, st in enumerate(states):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(st, str(paths[-1]))
    merged = linear_merge(paths)
    for key in states[0]:
        naive = torch.stack([st[key].float() for st in states]).mean(0)
        assert merged[key].dtype == torch.bfloat16, key
        assert torch.allclose(merged[key].float(), naive, rtol=2**-7, atol=1e-3), key  # one bf16 rounding


def test_merge_into_mixed_targets_with_empty_tensors(tmp_path):
    g = torch.Generator().manual_seed(1)
    states = [
        {"a": torch.randn(300, 7, generator=g), "empty": torch.zeros(0), "b": torch.randn(5, generator=g)}
        for _ in range(2)
    ]
    paths = []
    for i, st in enumerate(states):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(st, str(paths[-1]))
    out = {"a": torch.empty(300, 7, dtype=torch.bfloat16), "empty": torch.zeros(0), "b": torch.empty(5)}
    linear_merge(paths, out=out, block=100)
    assert torch.allclose(out["a"].float(), (states[0]["a"] + states[1]["a"]) / 2, rtol=2**-7, atol=1e-3)
    assert torch.allclose(out["b"], (states[0]["b"] + states[1]["b"]) / 2, atol=1e-6)


def test_revolving_door_visits_every_subset_once_by_single_swaps():
    import itertools

    for n, k in [(5, 2), (6, 3), (8, 4), (4, 4), (7, 1)]:
        order = revolving_door(n, k)
        assert sorted(map(tuple, map(sorted, order))) == list(itertools.combinations(range(n), k))
        for a, b in zip(order, order[1:]):
            assert len(set(a) - set(b)) == 1 and len(set(b) - set(a)) == 1, (a, b)


@pytest.mark.parametrize("refresh", [1000, 3])
def test_running_merges_equal_merging_each_subset(seed, tmp_path, refresh):
    paths = perturbed_models(seed, tmp_path, 5)
    seen = 0
    with LinearMerge(block=50_000) as linear:
        for subset, merged in running_merges(paths, 3, refresh=refresh, linear=linear):
            direct = linear_merge([paths[i] for i in subset])
            for key, t in direct.items():
                assert torch.allclose(merged[key], t, atol=1e-5), (subset, key)
            seen += 1
    assert seen == 10


def test_non_float_tensors_are_copied_and_checked(tmp_path):
    a, b, c = (tmp_path / f"{x}.safetensors" for x in "abc")
    save_file({"w": torch.ones(3), "idx": torch.arange(4)}, str(a))
    save_file({"w": torch.zeros(3), "idx": torch.arange(4)}, str(b))
    save_file({"w": torch.zeros(3), "idx": torch.arange(4) + 1}, str(c))
    out = linear_merge([a, b])
    assert torch.equal(out["idx"], torch.arange(4)) and torch.allclose(out["w"], torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="idx"):
        linear_merge([a, c])


def test_group_merge_is_the_average_of_group_averages(seed, tmp_path):
    p = perturbed_models(seed, tmp_path, 3)
    macro = linear_merge(p, group_weights([[1.0, 1.0], [1.0]]))
    ab = tmp_path / "ab.safetensors"
    save_state(linear_merge([p[0], p[1]]), ab)
    of_merged = linear_merge([ab, p[2]])  # an average of an already-merged model
    for key in macro:
        assert torch.allclose(macro[key], of_merged[key], atol=1e-6)
        manual = ((load_file(str(p[0]))[key] + load_file(str(p[1]))[key]) / 2 + load_file(str(p[2]))[key]) / 2
        assert torch.allclose(macro[key], manual, atol=1e-6)


def test_merge_rejects_mismatched_models(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.ones(3)}, str(a))
    save_file({"v": torch.ones(3)}, str(b))
    with pytest.raises(ValueError, match="different tensors"):
        linear_merge([a, b])


def test_perplexity_equals_exp_of_hf_loss(seed):
    model, tok = seed.load_model(), seed.load_tokenizer()
    text = demo_docs("satire", 5)[3]["text"][:300]
    es = build_eval_set("s", [Document(text, "s")], tok, ctx=128, stride=None, max_tokens=10_000)
    ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 128, "one window: the comparison is exact"
    with torch.no_grad():
        hf_loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    score = score_model(model, es, batch_size=4, device=resolve_device("cpu"))
    assert score.tokens == len(ids) - 1
    assert score.perplexity == pytest.approx(math.exp(hf_loss), rel=1e-5)
    assert score.bits_per_byte == pytest.approx(hf_loss * (len(ids) - 1) / math.log(2) / len(text.encode()), rel=1e-5)


def test_rolling_windows_score_every_target_exactly_once():
    for n, ctx, stride in [(10, 4, 2), (257, 128, 64), (1000, 128, 100), (129, 128, 127), (5, 128, 64)]:
        ids = list(range(n))
        seen = []
        for w, start in rolling_windows(ids, ctx, stride):
            assert len(w) <= ctx and start >= 1
            first = ids.index(w[0])
            seen.extend(range(first + start, first + len(w)))
        assert seen == list(range(1, n)), (n, ctx, stride)


def test_long_documents_match_a_manual_rolling_window_loss(seed):
    model, tok = seed.load_model(), seed.load_tokenizer()
    text = demo_docs("drama-comedy", 1)[0]["text"][:4000]
    ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    es = build_eval_set("d", [Document(text, "d")], tok, ctx=128, stride=64, max_tokens=100_000)
    nll = 0.0
    with torch.no_grad():
        for w, start in rolling_windows(ids, 128, 64):
            logits = model(input_ids=torch.tensor([w])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            nll -= sum(logp[t - 1, w[t]].item() for t in range(start, len(w)))
    score = score_model(model, es, batch_size=3, device=resolve_device("cpu"))
    assert score.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)


def test_head_on_scored_positions_equals_full_forward(seed):
    model, tok = seed.load_model(), seed.load_tokenizer()
    docs = [Document(d["text"][:3000], "d") for d in demo_docs("drama-comedy", 3)]
    es = build_eval_set("d", docs, tok, ctx=128, stride=64, max_tokens=100_000)
    fast = score_model(model, es, batch_size=5, device=resolve_device("cpu"))
    full = score_model(model, es, batch_size=5, device=resolve_device("cpu"), head_only=False)
    assert fast.tokens == full.tokens
    assert fast.nll == pytest.approx(full.nll, rel=1e-5)


def test_scoring_spread_over_threads_equals_one_thread(seed):
    model, tok = seed.load_model(), seed.load_tokenizer()
    docs = [Document(d["text"][:4000], "d") for d in demo_docs("jargon", 6)]
    es = build_eval_set("d", docs, tok, ctx=128, stride=64, max_tokens=100_000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # batches spread over two single-threaded workers
        spread = score_model(model, es, batch_size=2, device=resolve_device("cpu"))
        torch.set_num_threads(1)
        serial = score_model(model, es, batch_size=2, device=resolve_device("cpu"))
        assert spread.nll == pytest.approx(serial.nll, rel=1e-6) and spread.tokens == serial.tokens
        one_batch = score_model(model, es, batch_size=1000, device=resolve_device("cpu"))
        torch.set_num_threads(2)  # one batch: its rows are split over the workers
        assert score_model(model, es, batch_size=1000, device=resolve_device("cpu")).nll == pytest.approx(
            one_batch.nll, rel=1e-6
        )
        torch.set_num_threads(2)
        score_model(model, es, batch_size=2, device=resolve_device("cpu"))
        assert torch.get_num_threads() == 2  # the workers' single thread does not leak out
        from concurrent.futures import ThreadPoolExecutor

        assert ThreadPoolExecutor(1).submit(torch.get_num_threads).result() == 2
    finally:
        torch.set_num_threads(before)


def test_a_large_model_is_scored_in_the_callers_thread_with_the_same_result(seed, monkeypatch):
    import dataassess.scoring as scoring

    model, tok = seed.load_model(), seed.load_tokenizer()
    docs = [Document(d["text"][:4000], "d") for d in demo_docs("jargon", 6)]
    es = build_eval_set("d", docs, tok, ctx=128, stride=64, max_tokens=100_000)
    with scoring.Scorer(2, "cpu", threads=2) as small:
        [spread] = small.score(model, [es])
        assert small._executor is not None
    monkeypatch.setattr(scoring, "LARGE_MODEL", 1)  # every model counts as large
    with scoring.Scorer(2, "cpu", threads=2) as large:
        [inline] = large.score(model, [es])
        assert large._executor is None, "no worker thread started"
    assert inline.nll == pytest.approx(spread.nll, rel=1e-6) and inline.tokens == spread.tokens


def test_a_large_models_padded_batches_are_cut_into_rows_of_similar_length_with_the_same_score(seed, monkeypatch):
    import dataassess.scoring as scoring

    model, tok = seed.load_model(), seed.load_tokenizer()
    docs = [Document(d["text"][:n], "d") for d, n in zip(demo_docs("jargon", 6), (150, 300, 450, 700, 1000, 4000))]
    es = build_eval_set("d", docs, tok, ctx=128, stride=64, max_tokens=100_000)
    whole = scoring.build_batches([es], 8)
    assert any(mask is not None for _, mask, _, _ in whole), "the set has short windows"
    cut = [b for batch in whole for b in scoring.banded(batch)]
    lengths = []
    for ids, mask, _, _ in cut:
        rows = [ids.shape[1]] * len(ids) if mask is None else mask.sum(1).tolist()
        assert max(rows) == ids.shape[1] and min(rows) >= 0.9 * ids.shape[1]
        assert (mask is None) == (min(rows) == ids.shape[1])
        lengths += rows
    assert sorted(lengths) == sorted(len(w) for w, _ in es.windows)
    assert sum(b[0].numel() for b in cut) < sum(b[0].numel() for b in whole)
    assert sum(int((b[2] != -100).sum()) for b in cut) == es.tokens

    with scoring.Scorer(8, "cpu", threads=1) as small:
        [kept_whole] = small.score(model, [es])
    monkeypatch.setattr(scoring, "LARGE_MODEL", 1)
    with scoring.Scorer(8, "cpu", threads=1) as large:
        [banded] = large.score(model, [es])
    assert banded.nll == pytest.approx(kept_whole.nll, rel=1e-5) and banded.tokens == kept_whole.tokens


def test_sets_scored_in_shared_batches_equal_each_alone(seed):
    from dataassess.scoring import score_sets

    model, tok = seed.load_model(), seed.load_tokenizer()
    sets = [
        build_eval_set(
            name,
            [Document(d["text"][:2500], name) for d in demo_docs(name, 3)],
            tok,
            ctx=128,
            stride=64,
            max_tokens=900,
        )
        for name in ("jargon", "satire", "drama-comedy")
    ]
    together = score_sets(model, sets, batch_size=4, device=resolve_device("cpu"))  # batches mix the sets' windows
    for es, score in zip(sets, together):
        alone = score_model(model, es, batch_size=4, device=resolve_device("cpu"))
        assert (score.tokens, score.bytes) == (alone.tokens, alone.bytes) == (es.tokens, es.bytes)
        assert score.nll == pytest.approx(alone.nll, rel=1e-5)


def test_seed_models_load_from_several_threads_at_once(seed):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: seed.load_model(), range(4)))
    reference = seed.load_model().state_dict()
    for m in models:
        assert all(torch.equal(v, reference[k]) for k, v in m.state_dict().items())


PEAK = """
import sys
from dataassess.merge import linear_merge
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
base = status("VmRSS")
linear_merge(sys.argv[1:])
print(status("VmHWM") - base)
"""


def test_merge_peak_memory_does_not_grow_with_the_number_of_models(tmp_path):
    import subprocess
    import sys

    model = {f"w{i}": torch.randn(8_000_000) for i in range(4)}  # 128 MB
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v + i for k, v in model.items()}, str(paths[-1]))
    model_bytes = paths[0].stat().st_size

    def peak(k):
        out = subprocess.run(
            [sys.executable, "-c", PEAK, *map(str, paths[:k])], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip().splitlines()[-1])

    p2, p6 = peak(2), peak(6)
    assert p2 < 1.5 * model_bytes and p6 < 1.5 * model_bytes, (p2 / model_bytes, p6 / model_bytes)
    assert p6 - p2 < 0.25 * model_bytes
