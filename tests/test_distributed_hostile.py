"""Ranks that disagree: distributed loading agrees before it exchanges.

Each test spawns two real processes joined by a gloo process group on
127.0.0.1 and hands the ranks inputs that differ: two versions of a
checkpoint with the same names, shapes and dtypes; metadata that differs
only; plans that split another dimension or another tensor (equal buffer
sizes, so a collective would run and mix values) or that leave the buffers
unequal (gloo aborts the process); a plan that raises on one rank only; a
file missing on one rank; a file cut short on one rank after it was opened.

Every rank must come back with an error (the same SafetensorError on every
rank for a mismatch; its own error on a rank that failed and a
SafetensorError naming that rank on the others) long before the process
group's timeout, no rank may die by a signal, and afterwards the group is
still in step: a good load on every rank returns the right values.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import safetensors_c.torch as ct  # noqa: E402
from safetensors_c import distributed  # noqa: E402
from safetensors_c.integrity import save_file_with_digests  # noqa: E402

from rank_processes import (free_port, process_group, read_reports, spawn_ranks,  # noqa: E402
                            write_report)

WORLD = 2
# A rank left waiting in a collective would wait this long: far beyond the
# deadline below, so waiting for the timeout fails the test.
GROUP_TIMEOUT = 600  # seconds
DEADLINE = 60  # seconds for every rank to exit (start-up included)
PROMPT = 30  # seconds from the call to the error on every rank: "within seconds"

MISMATCH = "STC_ERR_RANK_MISMATCH"
FAILED = "STC_ERR_RANK_FAILED"


def tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(64, 32, generator=g),
        "b": torch.randn(64, 32, generator=g),  # the same shape as a
        "sq": torch.randn(48, 48, generator=g),
        "bias": torch.randn(32, generator=g),
    }


def expected(path, plan, rank):
    """What rank ``rank`` of WORLD should get: a local load, cut by ``plan``."""
    out = {}
    for name, full in ct.load_file(path).items():
        dim = (plan or {}).get(name)
        if dim is not None:
            lo, hi = distributed.rank_slice(full.shape[dim], rank, WORLD)
            full = full.narrow(dim, lo, hi - lo)
        out[name] = full
    return out


def wrong(got, want):
    """Names whose values, dtype or shape differ (or that are missing/extra)."""
    bad = sorted(set(got) ^ set(want))
    for name in sorted(set(got) & set(want)):
        g, w = got[name], want[name]
        if g.dtype != w.dtype or g.shape != w.shape or not torch.equal(g, w):
            bad.append(name)
    return bad


# MARK: what each rank does --------------------------------------------------


def versions(rank, args):
    # Rank r loads version r of the checkpoint: a shard both share, then
    # one whose values (and so its recorded digests) differ.
    return distributed.load_files([args["shared"], args["versions"][rank]])


def file_count(rank, args):
    files = [args["shared"], args["versions"][0]]
    return distributed.load_files(files if rank == 0 else files[1:])


def metadata_only(rank, args):
    return distributed.load_file(args["metadata"][rank])


def other_tensor(rank, args):
    # a and b have one shape: each rank's buffers are the same size.
    return distributed.load_file(args["good"], plan={"a": 0} if rank == 0 else {"b": 0})


def other_dimension(rank, args):
    return distributed.load_file(args["good"], plan={"sq": rank})


def unequal_plans(rank, args):
    # Rank 0 splits a, rank 1 replicates it: buffers of different sizes.
    return distributed.load_file(args["good"], plan={"a": 0} if rank == 0 else None)


def plan_raises(rank, args):
    def plan(name, shape):
        if rank == 1 and name == "sq":
            raise ValueError("no dimension for 'sq' on this rank")
        return None

    return distributed.load_file(args["good"], plan=plan)


def long_message(rank, args):
    def plan(name, shape):
        if rank == 1:
            raise ValueError("é" * 3000 + "\nsecond line")
        return None

    return distributed.load_file(args["good"], plan=plan)


def missing_file(rank, args):
    path = args["missing"] if rank == 0 else args["good"]
    return distributed.load_file(path)


def cut_short(rank, args):
    # Each rank has its own copy; rank 1's shrinks after it was opened and
    # validated (the plan runs in between), so its reads come up short.
    path = args["copies"][rank]

    def plan(name, shape):
        if rank == 1:
            os.truncate(path, args["data_start"] + 8)
        return None

    return distributed.load_file(path, plan=plan)


def finding_fails(rank, args):
    # Finding the files (e.g. reading a sharded checkpoint's index) fails on
    # rank 0 only; the function runs inside the agreement.
    def find():
        if rank == 0:
            raise FileNotFoundError("no index in this rank's checkpoint directory")
        return [args["good"]]

    return distributed.load_files(find)


def sharded_index_missing(rank, args):
    # Rank 0's copy of the checkpoint lost its index: load_sharded reads it
    # inside the agreement, so rank 1 hears of it instead of waiting.
    return ct.load_sharded(args["sharded"]["no_index" if rank == 0 else "good"],
                           process_group=dist.group.WORLD, progress=False)


def sharded_mix(rank, args):
    # Rank 1's copy holds a shard of another save under the index: refused on
    # rank 1 from the headers load_files opened, and so on every rank.
    return ct.load_sharded(args["sharded"]["mixed" if rank == 1 else "good"],
                           process_group=dist.group.WORLD, progress=False)


def agree(rank, args):
    return distributed.load_files([args["shared"], args["versions"][0]], plan=args["plan"])


SCENARIOS = {f.__name__: f for f in (
    versions, file_count, metadata_only, other_tensor, other_dimension, unequal_plans,
    plan_raises, long_message, missing_file, finding_fails, cut_short, sharded_index_missing,
    sharded_mix, agree,
)}


def worker(rank, port, scenario, args, out_dir):
    with process_group(rank, WORLD, port, GROUP_TIMEOUT):
        report = {}
        try:
            start = time.monotonic()
            try:
                got = SCENARIOS[scenario](rank, args)
                report["loaded"] = sorted(got)
                if scenario == "agree":
                    want = expected(args["shared"], args["plan"], rank)
                    want.update(expected(args["versions"][0], args["plan"], rank))
                    report["wrong"] = wrong(got, want)
            except Exception as exc:
                report["error"] = {"type": type(exc).__name__,
                                   "code": getattr(exc, "code", None), "message": str(exc)}
            report["seconds"] = time.monotonic() - start
            # The group is still in step: the same good load on every rank.
            plan = {"a": 0, "sq": 1}
            got = distributed.load_file(args["good"], plan=plan)
            report["after"] = wrong(got, expected(args["good"], plan, rank))
        except Exception as exc:
            report["worker"] = f"{type(exc).__name__}: {exc}"
        finally:
            write_report(out_dir, rank, report)


def run(scenario, args, out_dir):
    """Every rank's report; fails unless every rank exited by itself, with
    code 0 (no signal death, no crash), within DEADLINE."""
    spawn_ranks(worker, (free_port(), scenario, args, str(out_dir)), WORLD, deadline=DEADLINE)
    reports = read_reports(str(out_dir), WORLD)
    for rep in reports:
        assert "worker" not in rep, reports
        assert rep["after"] == [], reports
        assert rep["seconds"] < PROMPT, reports
    return reports


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    good = str(root / "good.safetensors")
    ct.save_file(tensors(0), good)
    shared = str(root / "shared.safetensors")
    ct.save_file({"embed": torch.arange(40, dtype=torch.float32).reshape(10, 4)}, shared)
    versions = []
    for v in range(WORLD):
        path = str(root / f"v{v}.safetensors")
        save_file_with_digests(tensors(10 + v), path, framework="pt")
        versions.append(path)
    metadata = []
    for v in range(WORLD):
        path = str(root / f"meta{v}.safetensors")
        ct.save_file(tensors(0), path, metadata={"step": str(1000 + v)})
        metadata.append(path)
    copies = []
    for r in range(WORLD):
        path = str(root / f"copy{r}.safetensors")
        shutil.copyfile(good, path)
        copies.append(path)
    with open(good, "rb") as fh:
        data_start = 8 + int.from_bytes(fh.read(8), "little")
    sharded = {}
    for name in ("good", "other", "mixed", "no_index"):
        sharded[name] = str(root / f"sharded-{name}")
        ct.save_sharded(tensors(0), sharded[name], max_shard_size=200, progress=False)
    shard_names = sorted(os.listdir(sharded["good"]))
    assert len([n for n in shard_names if n.endswith(".safetensors")]) > 1, shard_names
    first_shard = shard_names[0]
    shutil.copyfile(os.path.join(sharded["other"], first_shard),
                    os.path.join(sharded["mixed"], first_shard))
    os.remove(os.path.join(sharded["no_index"], "model.safetensors.index.json"))
    return {"good": good, "shared": shared, "versions": versions, "metadata": metadata,
            "copies": copies, "data_start": data_start, "sharded": sharded,
            "first_shard": first_shard,
            "missing": str(root / "no-such-file.safetensors"),
            "plan": {"a": 0, "sq": 1, "embed": 1}}


def assert_mismatch(reports, what):
    """The same SafetensorError on every rank, naming what differs and the ranks."""
    errors = [rep.get("error") for rep in reports]
    assert all(e is not None for e in errors), reports
    assert all(e["type"] == "SafetensorError" and e["code"] == MISMATCH for e in errors), errors
    assert errors[0]["message"] == errors[1]["message"], errors
    message = errors[0]["message"]
    assert what in message, message
    assert "rank 0" in message and "rank 1" in message, message
    return message


def test_two_versions_of_a_checkpoint_are_refused_on_every_rank(files, tmp_path):
    # Equal names, shapes and dtypes; other values and so other digests.
    ours = ct.load_file(files["versions"][0])
    theirs = ct.load_file(files["versions"][1])
    assert {n: (t.dtype, t.shape) for n, t in ours.items()} == \
        {n: (t.dtype, t.shape) for n, t in theirs.items()}
    message = assert_mismatch(run("versions", files, tmp_path), "different files")
    assert "file 2" in message, message  # the second file; the first is the same


def test_another_number_of_files_is_a_mismatch(files, tmp_path):
    message = assert_mismatch(run("file_count", files, tmp_path), "different numbers of files")
    assert "rank 0: 2, rank 1: 1" in message, message


def test_metadata_alone_differing_is_a_mismatch(files, tmp_path):
    assert_mismatch(run("metadata_only", files, tmp_path), "different files")


def test_a_plan_splitting_another_tensor_of_equal_size_is_refused(files, tmp_path):
    message = assert_mismatch(run("other_tensor", files, tmp_path), "different plans")
    assert "different files" not in message, message


def test_a_plan_splitting_another_dimension_is_refused(files, tmp_path):
    assert_mismatch(run("other_dimension", files, tmp_path), "different plans")


def test_unequal_plans_raise_instead_of_aborting(files, tmp_path):
    # Buffers of unequal size in one collective abort gloo (SIGABRT).
    assert_mismatch(run("unequal_plans", files, tmp_path), "different plans")


def failed_elsewhere(error, rank, text):
    assert error["type"] == "SafetensorError" and error["code"] == FAILED, error
    assert f"rank {rank} failed" in error["message"], error
    assert text in error["message"], error


# scenario, the rank that raised, what it raised, what every other rank hears
RAISED_ON_ONE_RANK = [
    ("plan_raises", 1,
     {"type": "ValueError", "code": None, "message": "no dimension for 'sq' on this rank"},
     "ValueError: no dimension for 'sq' on this rank"),
    ("finding_fails", 0,
     {"type": "FileNotFoundError", "code": None,
      "message": "no index in this rank's checkpoint directory"},
     "FileNotFoundError: no index in this rank's checkpoint"),
]


@pytest.mark.parametrize("scenario, failing, raised, heard", RAISED_ON_ONE_RANK,
                         ids=[case[0] for case in RAISED_ON_ONE_RANK])
def test_an_error_raised_on_one_rank_reaches_every_rank(files, tmp_path, scenario, failing,
                                                        raised, heard):
    # A plan that raises on rank 1 only; finding the files (the function
    # load_files runs inside the agreement) failing on rank 0 only.
    reports = run(scenario, files, tmp_path)
    assert reports[failing]["error"] == raised, reports[failing]
    failed_elsewhere(reports[1 - failing]["error"], failing, heard)


def test_the_message_carried_between_ranks_is_bounded(files, tmp_path):
    zero, one = run("long_message", files, tmp_path)
    assert one["error"]["type"] == "ValueError" and len(one["error"]["message"]) > 3000, one
    message = zero["error"]["message"]
    failed_elsewhere(zero["error"], 1, "ValueError: ééé")
    # Only the first line travels, cut (on a character boundary) to fit.
    assert "second line" not in message and "\n" not in message, message
    assert len(message.encode()) < 1024, len(message.encode())
    assert message.endswith("..."), message


def test_a_file_missing_on_one_rank_reaches_every_rank(files, tmp_path):
    zero, one = run("missing_file", files, tmp_path)
    assert zero["error"]["type"] == "FileNotFoundError", zero
    assert "no-such-file.safetensors" in zero["error"]["message"], zero
    failed_elsewhere(one["error"], 0, "FileNotFoundError")
    assert "no-such-file.safetensors" in one["error"]["message"], one


def test_a_read_failing_on_one_rank_reaches_every_rank(files, tmp_path):
    zero, one = run("cut_short", files, tmp_path)
    assert one["error"]["type"] == "SafetensorError", one
    assert one["error"]["code"] == "STC_ERR_FILE_CHANGED", one
    failed_elsewhere(zero["error"], 1, "shorter than when it was opened")


def test_a_sharded_index_missing_on_one_rank_reaches_every_rank(files, tmp_path):
    zero, one = run("sharded_index_missing", files, tmp_path)
    assert zero["error"]["type"] == "FileNotFoundError", zero
    failed_elsewhere(one["error"], 0, "FileNotFoundError")


def test_a_mix_of_saves_on_one_rank_reaches_every_rank(files, tmp_path):
    zero, one = run("sharded_mix", files, tmp_path)
    assert one["error"]["code"] == "STC_ERR_SHARD_MISMATCH", one
    assert repr(files["first_shard"]) in one["error"]["message"], one
    failed_elsewhere(zero["error"], 1, "STC_ERR_SHARD_MISMATCH")


def test_agreeing_ranks_load_the_right_values(files, tmp_path):
    reports = run("agree", files, tmp_path)
    for rep in reports:
        assert "error" not in rep, reports
        assert rep["wrong"] == [], reports
        assert rep["loaded"] == ["a", "b", "bias", "embed", "sq"], reports
