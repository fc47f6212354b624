"""Sharded generation (trust/generation, dask_runner.py): plain Dask workers (2 worker processes
of a LocalCluster reached by address, or thread workers), each loading a tiny SD model (+ a
weights delta) from its folder, give exactly the images of serial generation; a wrong
fingerprint is refused, a transient failure is retried once."""

import copy
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch

from tests.tiny_models import tiny_sd_parts
from trust.config import EvaluateParams
from trust.delta import apply_delta, save_delta
from trust.generation import GenerationSettings, ModelMismatchError, ModelSource, generate_images, reassemble, shards
from trust.models import save_model

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a red cross", "a blue circle"]


@pytest.fixture(scope="module")
def model(tmp_path_factory, world_tokenizer):
    folder = tmp_path_factory.mktemp("gen")
    parts = tiny_sd_parts(world_tokenizer)
    save_model(parts, folder / "base")
    base_fp = parts.fingerprint()
    base = {k: v.clone() for k, v in parts.unet.state_dict().items()}
    tuned = dict(base)
    name = next(k for k in base if k.endswith("attn2.to_k.weight"))
    tuned[name] = base[name] * 0.5
    save_delta(base, tuned, folder / "delta.safetensors", {"base_fingerprint": base_fp})
    return parts, folder, base_fp


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    # Dask worker processes inherit the environment: one torch thread each on the shared cores.
    monkeypatch.setenv("TRUST_NUM_THREADS", "1")


def test_shards_cover_the_lists_in_order():
    p, s = [f"p{i}" for i in range(7)], list(range(100, 107))
    pieces = shards(p, s, 3)
    assert [len(x) for x, _ in pieces] == [3, 3, 1]
    assert sum((x for x, _ in pieces), []) == p and sum((y for _, y in pieces), []) == s
    with pytest.raises(ValueError, match="one seed per prompt"):
        shards(p, s[:-1], 3)
    with pytest.raises(RuntimeError, match="shard 1 returned"):
        reassemble([torch.zeros(3, 1), torch.zeros(2, 1)], [3, 3])


def test_serial_by_default():
    s = GenerationSettings.from_params(EvaluateParams())
    assert not s.distributed and s.dask_address is None and s.shard_size == 64


@pytest.fixture(scope="module")
def cluster():
    """An existing Dask cluster (2 worker processes) reached by address, as with evaluate.dask_address:
    the LocalCluster `evaluate.distributed` starts by itself (workers forked from a forkserver)."""
    from trust.generation.dask_runner import dask_client

    with dask_client(GenerationSettings(distributed=True, workers=2)) as client:
        yield client.scheduler.address


SEEDS = [11, 12, 13, 14, 15]
SERIAL = GenerationSettings(shard_size=2)


def test_worker_processes_match_serial(model, cluster):
    parts, folder, base_fp = model
    # 3 shards over 2 worker processes, each loading the folder; serial from the model in memory.
    settings = GenerationSettings(distributed=True, dask_address=cluster, shard_size=2)
    want = generate_images(PROMPTS, SEEDS, 3, 4.0, SERIAL, parts=parts)
    got = generate_images(PROMPTS, SEEDS, 3, 4.0, settings, source=ModelSource.of(folder / "base", base_fp))
    assert got.shape == want.shape == (5, 3, 16, 16)
    assert torch.equal(got, want)


def test_local_cluster_with_delta_matches_serial(model):
    parts, folder, base_fp = model
    tuned = copy.deepcopy(parts)
    apply_delta(tuned, folder / "delta.safetensors")
    source = ModelSource.of(folder / "base", tuned.fingerprint(), delta=folder / "delta.safetensors")
    # The default runner (a LocalCluster of `workers` workers; threads here, to spare the test a process start).
    settings = GenerationSettings(distributed=True, workers=2, shard_size=2, processes=False)
    want = generate_images(PROMPTS, SEEDS, 3, 4.0, SERIAL, parts=tuned)
    got = generate_images(PROMPTS, SEEDS, 3, 4.0, settings, source=source)
    assert torch.equal(got, want)
    assert not torch.equal(want, generate_images(PROMPTS, SEEDS, 3, 4.0, SERIAL, parts=parts))
    # The serial path can load the same source itself.
    assert torch.equal(generate_images(PROMPTS, SEEDS, 3, 4.0, SERIAL, source=source), want)


def test_wrong_fingerprint_is_refused(model, cluster):
    _, folder, base_fp = model
    # The caller expects the base model, but base + delta is what the workers load.
    wrong = ModelSource.of(folder / "base", base_fp, delta=folder / "delta.safetensors")
    settings = GenerationSettings(distributed=True, dask_address=cluster, shard_size=2)
    with pytest.raises(ModelMismatchError, match="fingerprint .* but the caller expects sha256:"):
        generate_images(PROMPTS[:3], SEEDS[:3], 3, 4.0, settings, source=wrong)
    with pytest.raises(ModelMismatchError):
        generate_images(PROMPTS[:1], SEEDS[:1], 3, 4.0, SERIAL, source=wrong)


class FlakyExecutor:
    """A thread pool whose first `fail` submissions fail with `error` instead of running."""

    def __init__(self, pool: ThreadPoolExecutor, error: Exception, fail: int = 1):
        self.pool, self.error, self.fail, self.submitted = pool, error, fail, 0

    def submit(self, fn, *args):
        self.submitted += 1
        if self.submitted <= self.fail:
            f = Future()
            f.set_exception(self.error)
            return f
        return self.pool.submit(fn, *args)


def test_transient_failure_is_retried_once(model):
    parts, folder, base_fp = model
    source, settings = ModelSource.of(folder / "base", base_fp), GenerationSettings(distributed=True, shard_size=2)
    want = generate_images(PROMPTS, SEEDS, 3, 4.0, SERIAL, parts=parts)
    with ThreadPoolExecutor(2) as pool:
        flaky = FlakyExecutor(pool, OSError("connection reset"))
        assert torch.equal(generate_images(PROMPTS, SEEDS, 3, 4.0, settings, source=source, executor=flaky), want)
        assert flaky.submitted == 3 + 1  # 3 shards, the failed one once more
        twice = FlakyExecutor(pool, OSError("connection reset"), fail=4)  # the 3 first tries and shard 0's retry
        with pytest.raises(OSError, match="connection reset"):
            generate_images(PROMPTS, SEEDS, 3, 4.0, settings, source=source, executor=twice)


def test_model_mismatch_is_not_retried(model):
    _, folder, base_fp = model
    settings = GenerationSettings(distributed=True, shard_size=2)
    with ThreadPoolExecutor(1) as pool:
        flaky = FlakyExecutor(pool, ModelMismatchError("wrong model"))
        with pytest.raises(ModelMismatchError, match="wrong model"):
            generate_images(PROMPTS, SEEDS, 3, 4.0, settings, source=ModelSource.of(folder / "base", base_fp),
                            executor=flaky)
        assert flaky.submitted == 3  # every shard once, none again


def test_local_cluster_listens_on_localhost_only(cluster):
    """Dask's traffic is pickles: the scheduler, its HTTP server and every worker and nanny of the
    LocalCluster listen on 127.0.0.1, never on all interfaces (":0" meant 0.0.0.0)."""
    import os

    import psutil

    me = psutil.Process(os.getpid())
    listening = [(p.pid, c.laddr) for p in [me, *me.children(recursive=True)]
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert cluster.startswith("tcp://127.0.0.1:")
    assert len(listening) >= 3  # scheduler, its HTTP server, the workers (and nannies)
    assert all(addr.ip == "127.0.0.1" for _, addr in listening), listening
