"""Jobs sharing one denoising pass: the compatibility key, claiming several jobs on both backends, a worker that
settles each job of a pass on its own (failure, cancel), and batched InstantID outputs equal to single runs."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from faces_util import square_image, textured
from idforge.server.batching import payload_batch_key, spec_batch_key
from idforge.server.db import NewJob, Store
from idforge.server.images import ImagePolicy
from idforge.server.jobs import Delivery, JobError, JobOutput, JobSpec, _encode_payload
from idforge.server.methods import build_spec
from idforge.server.schemas import METHOD_BODIES
from idforge.server.worker import Worker, WorkerConfig


def face_png(kind: str) -> str:
    image = square_image(448, 448, [])
    image[120:270, 130:280] = textured(150, kind)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


FACES = {kind: face_png(kind) for kind in ("checks", "stripes", "plain")}


def instantid_spec(prompt: str = "p", seed: int = 1, face: str = "checks", **fields) -> JobSpec:
    body = {"prompt": prompt, "seed": seed, "face_image": FACES[face], "width": 64, "height": 64}
    body |= {"num_inference_steps": 4} | fields
    return build_spec("instantid", METHOD_BODIES["instantid"](**body), ImagePolicy(allow_urls=False))


# -- the key ---------------------------------------------------------------------------------------------------------


def test_key_ignores_per_sample_inputs_and_separates_pass_settings():
    key = spec_batch_key(instantid_spec())
    assert key is not None
    same = instantid_spec(prompt="other", seed=9, face="stripes", negative_prompt="blur", style="watercolor")
    assert spec_batch_key(same) == key  # prompt, seed, face, style are per sample
    for changed in (
        {"num_inference_steps": 5},
        {"guidance_scale": 4.0},
        {"width": 72, "height": 64},
        {"ip_weight": 0.5},
        {"cn_strength": 0.3},
        {"pose_image": FACES["stripes"]},
    ):
        assert spec_batch_key(instantid_spec(**changed)) not in (None, key), changed
    for alone in (
        {"enhance_face_region": True},
        {"num_images": 2},
        {"best_of": 2},
        {"mask_image": FACES["plain"]},
    ):
        assert spec_batch_key(instantid_spec(**alone)) is None, alone
    assert spec_batch_key(instantid_spec(width=None, height=None)) is None  # size from each keypoint image
    spec = instantid_spec()
    assert (
        payload_batch_key("instantid", _encode_payload(spec)) == key
    )  # the stored payload gives the same key
    assert payload_batch_key("faceid", _encode_payload(spec)) is None  # no batched path for FaceID yet
    assert payload_batch_key("instantid", "not json") is None


# -- claiming several jobs ------------------------------------------------------------------------------------------


def queue(store: Store, key_id: str, job_id: str, steps: int = 4, prompt: str = "p") -> None:
    spec = instantid_spec(prompt=prompt, num_inference_steps=steps)
    store.submit_job(NewJob(job_id, "instantid", _encode_payload(spec), key_id, 1, sync=False))


def test_claim_many_takes_the_head_and_its_compatible_followers(db_url):
    store = Store.open(db_url)
    try:
        record, _ = store.create_key(100)
        for index, steps in enumerate([4, 5, 4, 4, 5, 4]):
            queue(store, record.id, f"req_{index}", steps=steps)
        first = store.jobs_repo.claim_many("w0", 30, 3, payload_batch_key)
        assert [job.id for job in first] == ["req_0", "req_2", "req_3"]  # oldest first, 5-step jobs skipped
        assert {store.job(job.id)["status"] for job in first} == {"PROCESSING"}
        second = store.jobs_repo.claim_many("w0", 30, 3, payload_batch_key)
        assert [job.id for job in second] == ["req_1", "req_4"]  # the head now is a 5-step job
        assert [job.id for job in store.jobs_repo.claim_many("w0", 30, 3, payload_batch_key)] == ["req_5"]
        assert store.jobs_repo.claim_many("w0", 30, 3, payload_batch_key) == []
        assert all(job.attempts == 1 for job in first + second)
    finally:
        store.close()


def test_concurrent_claim_many_never_gives_a_job_twice(db_url):
    owner = Store.open(db_url)
    record, _ = owner.create_key(1000)
    job_ids = [f"req_{i:03d}" for i in range(60)]
    for index, job_id in enumerate(job_ids):
        queue(owner, record.id, job_id, steps=4 + index % 2)
    workers = [Store.open(db_url) for _ in range(4)]
    taken: dict[int, list[list[str]]] = {i: [] for i in range(4)}

    def drain(i: int) -> None:
        while claimed := workers[i].jobs_repo.claim_many(f"w{i}", 60, 4, payload_batch_key):
            taken[i].append([job.id for job in claimed])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(drain, range(4)))
    batches = [batch for per_worker in taken.values() for batch in per_worker]
    everything = sorted(job for batch in batches for job in batch)
    assert everything == job_ids  # each job exactly once
    for batch in batches:  # every batch is one key: all even-numbered (4 steps) or all odd (5 steps)
        assert len({int(job[-3:]) % 2 for job in batch}) == 1 and len(batch) <= 4
    assert max(len(batch) for batch in batches) > 1
    for s in [owner, *workers]:
        s.close()


# -- the worker: one pass, each job settled alone --------------------------------------------------------------


class BatchGenerator:
    """Steps through a pass of several jobs; prompt "fail" is a bad input of that job alone."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.passes: list[list[str]] = []

    def generate(self, spec: JobSpec, progress) -> JobOutput:
        return self.generate_batch([spec], progress)[0]

    def generate_batch(self, specs: list[JobSpec], progress) -> list:
        self.passes.append([spec.params["prompt"] for spec in specs])
        total = specs[0].params["num_inference_steps"]
        for step in range(1, total + 1):
            time.sleep(self.step_s)
            progress(step, total)
        return [
            JobError(400, "face_image: no face found", "face_image")
            if spec.params["prompt"] == "fail"
            else JobOutput(images=[Image.new("RGB", (8, 8))], seeds=[spec.params["seed"]])
            for spec in specs
        ]


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def worker_config(**overrides) -> WorkerConfig:
    return WorkerConfig(replica="w0", **({"lease_s": 3.0, "poll_s": 0.2, "heartbeat_s": 0.2} | overrides))


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store.db")
    yield s
    s.close()


def test_a_pass_settles_each_job_alone_and_a_bad_input_fails_only_its_job(store):
    record, _ = store.create_key(10)
    for index, prompt in enumerate(["a", "fail", "c", "d", "e"]):
        queue(store, record.id, f"req_{index}", prompt=prompt)
    generator = BatchGenerator()
    worker = Worker(store, generator, worker_config(max_batch=4), warm_up=False).start()
    try:
        wait_for(lambda: sum(store.counts().get(s, 0) for s in ("COMPLETED", "FAILED")) == 5, what="5 jobs")
    finally:
        worker.stop()
    assert generator.passes == [["a", "fail", "c", "d"], ["e"]]
    states = {f"req_{i}": store.job(f"req_{i}")["status"] for i in range(5)}
    assert states == {"req_0": "COMPLETED", "req_1": "FAILED", "req_2": "COMPLETED", "req_3": "COMPLETED",
                      "req_4": "COMPLETED"}  # fmt: skip
    assert store.job("req_1")["error_field"] == "face_image"
    assert store.balance(record.id) == 10 - 4  # four charged once each; the failed one released
    assert Delivery.from_json(store.job("req_0")["result"]).timings["batch_jobs"] == 4
    assert worker.jobs_done == 4 and worker.jobs_failed == 1
    assert store.audit() == []


def test_default_max_batch_runs_one_job_per_pass(store):
    record, _ = store.create_key(10)
    for index in range(3):
        queue(store, record.id, f"req_{index}", prompt=str(index))
    generator = BatchGenerator()
    worker = Worker(store, generator, worker_config(), warm_up=False).start()
    try:
        wait_for(lambda: store.counts().get("COMPLETED") == 3, what="3 jobs")
    finally:
        worker.stop()
    assert generator.passes == [["0"], ["1"], ["2"]]


def test_cancel_of_one_job_stops_the_pass_and_the_others_run_again(store):
    record, _ = store.create_key(10)
    for index in range(3):
        queue(store, record.id, f"req_{index}", prompt=str(index), steps=60)
    generator = BatchGenerator(step_s=0.02)
    worker = Worker(store, generator, worker_config(max_batch=3, progress_every_s=0.0), warm_up=False).start()
    try:
        wait_for(lambda: (store.job("req_1")["step"] or 0) >= 3, what="the pass to run")
        store.cancel("req_1", record.id)
        wait_for(lambda: store.counts().get("COMPLETED") == 2, what="the other two")
    finally:
        worker.stop()
    assert store.job("req_1")["status"] == "CANCELED"
    assert generator.passes == [["0", "1", "2"], ["0", "2"]]
    assert store.balance(record.id) == 10 - 2
    assert store.audit() == []


# -- the engine: a batched pass equals its single runs ----------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tiny_kit):
    from idforge.engine.session import ModelChoice
    from idforge.server.methods import EngineGenerator

    return EngineGenerator(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_batched_instantid_outputs_equal_their_single_runs(generator):
    """Tolerance: a batched UNet call differs from a single one by float rounding, so the decoded images may
    differ by 1 level of 255 here and there; allowed: at most 2 levels anywhere, and mean < 0.05. Different
    jobs' images differ by far more (checked), so a pass that mixed up faces, prompts or seeds fails."""
    specs = [
        instantid_spec(prompt="a portrait", seed=3, face="checks"),
        instantid_spec(prompt="a portrait", seed=3, face="stripes"),  # only the face differs from job 0
        instantid_spec(prompt="at the beach", seed=3, face="checks", style="watercolor"),  # only the prompt
        instantid_spec(prompt="a portrait", seed=4, face="checks"),  # only the seed
    ]
    singles = [generator.generate(spec, lambda step, total: None) for spec in specs]
    steps: list[tuple[int, int]] = []
    batched = generator.generate_batch(specs, lambda step, total: steps.append((step, total)))
    assert steps == [(i, 4) for i in range(1, 5)]  # one pass of 4 steps for all four jobs
    for single, output in zip(singles, batched, strict=True):
        assert isinstance(output, JobOutput)
        difference = np.abs(_pixels(single.images[0]) - _pixels(output.images[0]))
        assert difference.max() <= 2 and difference.mean() < 0.05
        assert output.seeds == single.seeds
        assert output.recipe["batch"]["jobs"] == 4
        assert output.recipe["params"]["prompt"] == single.recipe["params"]["prompt"]
        assert output.recipe["inputs"]["faces"] == single.recipe["inputs"]["faces"]
    for other in singles[1:]:  # each job's own input matters: its single run differs from job 0's
        assert np.abs(_pixels(other.images[0]) - _pixels(singles[0].images[0])).mean() > 1.0


def test_a_job_without_a_face_fails_alone_in_its_pass(generator):
    empty = base64.b64encode(_png(np.zeros((200, 200, 3), np.uint8))).decode("ascii")
    specs = [instantid_spec(seed=5), instantid_spec(seed=6)]
    specs[1].images["face_image"] = base64.b64decode(empty)
    single = generator.generate(specs[0], lambda step, total: None)
    outcomes = generator.generate_batch(specs, lambda step, total: None)
    assert isinstance(outcomes[1], JobError) and outcomes[1].status == 400
    assert outcomes[1].field == "face_image"
    assert isinstance(outcomes[0], JobOutput)
    assert np.abs(_pixels(outcomes[0].images[0]) - _pixels(single.images[0])).max() <= 2
    assert outcomes[0].recipe["batch"]["jobs"] == 1


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_max_batch_below_one_is_a_one_line_error(tmp_path, capsys):
    from idforge.cli import main

    assert main(["serve", "--db", str(tmp_path / "s.db"), "--max-batch", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--max-batch" in err and "must be >= 1" in err and "\n" not in err


def test_a_worker_with_the_real_engine_runs_two_jobs_in_one_pass(generator, store):
    record, _ = store.create_key(10)
    specs = [
        instantid_spec(prompt="one", seed=7, face="checks"),
        instantid_spec(prompt="two", seed=8, face="stripes"),
    ]
    for index, spec in enumerate(specs):
        store.submit_job(NewJob(f"req_{index}", "instantid", _encode_payload(spec), record.id, 1, sync=False))
    worker = Worker(store, generator, worker_config(max_batch=2), warm_up=False).start()
    try:
        wait_for(lambda: store.counts().get("COMPLETED") == 2, timeout=60, what="2 jobs")
    finally:
        worker.stop()
    for index, spec in enumerate(specs):
        delivery = Delivery.from_json(store.job(f"req_{index}")["result"])
        assert delivery.seeds == [spec.params["seed"]] and delivery.timings["batch_jobs"] == 2
        assert delivery.recipe["batch"] == {"jobs": 2, "index": index}
        assert delivery.recipe["params"]["prompt"] == spec.params["prompt"]
    assert store.balance(record.id) == 8 and store.audit() == []
