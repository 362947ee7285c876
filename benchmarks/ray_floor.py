"""The floor of a run's start-up on Ray: the program sslpipe's ``pretrain`` is built like, with
nothing of sslpipe in it.

A local Ray; Ray Data reads the shards' row groups in one task pool and makes views in another
(a numpy array of zeros: no decoding), split over the workers as ``pretrain`` splits its
stream; Ray Train's ``TorchTrainer`` runs 2 gloo workers that read batches and do nothing with
them. Each run is a new Python process, timed from its start: how long until Ray is up, until
the train function starts, until its first batch, until ``fit`` returns, until the process has
exited. What ``pretrain`` takes beyond these is sslpipe's own (BENCHMARKS.md, Parity with
lightly).

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.ray_floor --shards DIR --runs 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MILESTONES = ("ray_up", "loop_started", "first_batch", "fit_returned", "exited")


def child(shards: str, workers: int, num_cpus: int, storage: str) -> None:
    """One run, in this process; prints its milestones as seconds from ``FLOOR_T0``."""
    t0 = float(os.environ["FLOOR_T0"])
    import numpy as np
    import ray
    import ray.data
    import ray.train
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ray_up = time.time() - t0
    files = sorted(os.path.join(shards, f) for f in os.listdir(shards) if f.endswith(".parquet"))

    def read(batch):
        import pyarrow.parquet as pq

        for path in batch["path"]:
            f = pq.ParquetFile(path)
            for i in range(f.num_row_groups):
                yield {"label": f.read_row_group(i, columns=["label"]).column(0).to_numpy()}

    def views(batch):
        n = len(batch["label"])
        return {"global": np.zeros((n, 2, 3, 32, 32), np.uint8), "label": batch["label"]}

    ds = ray.data.from_items([{"path": p} for p in files * 20], override_num_blocks=len(files))
    ds = ds.map_batches(read, batch_size=1, num_cpus=0.25, compute=ray.data.TaskPoolStrategy(1))
    ds = ds.map_batches(views, batch_size=128, num_cpus=1, compute=ray.data.TaskPoolStrategy(1))

    marks = os.path.join(storage, f"floor-{os.getpid()}.json")

    def loop(config):
        started = time.time()
        first = None
        for n, _ in enumerate(
            ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=128)
        ):
            first = first or time.time()
            if n == 20:
                break
        if ray.train.get_context().get_world_rank() == 0:
            with open(config["marks"], "w") as f:
                json.dump({"loop_started": started, "first_batch": first}, f)

    os.makedirs(storage, exist_ok=True)
    TorchTrainer(
        loop,
        train_loop_config={"marks": marks},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"floor-{os.getpid()}", storage_path=storage),
        datasets={"train": ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    ).fit()
    with open(marks) as f:
        out = {k: v - t0 for k, v in json.load(f).items()}
    os.remove(marks)
    out |= {"ray_up": ray_up, "fit_returned": time.time() - t0}
    print(json.dumps(out), flush=True)


def one_run(args) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.ray_floor", "--child", "--shards", args.shards]
    cmd += ["--workers", str(args.workers), "--num-cpus", str(args.num_cpus)]
    cmd += ["--storage", args.storage]
    t0 = time.time()
    env = {**os.environ, "FLOOR_T0": str(t0)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    exited = time.time() - t0
    if out.returncode != 0:
        raise RuntimeError(f"floor run failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "exited": exited}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="a folder of sslpipe shards (parquet)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=4, help="as pretrain's local Ray here")
    p.add_argument("--storage", default="/tmp/sslpipe-ray-floor", help="Ray Train's run folder")
    p.add_argument("--lock", default="", help="flock this file around each run")
    p.add_argument("--out", default="", help="append each run's milestones to this JSON-lines file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.shards, args.workers, args.num_cpus, args.storage)
        return
    from benchmarks.quality_data import locked

    runs = []
    for i in range(args.runs):
        with locked(args.lock):
            runs.append(one_run(args))
        print(f"run {i + 1}: " + "  ".join(f"{k} {runs[-1][k]:.1f} s" for k in MILESTONES))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **runs[-1]}) + "\n")
    medians = {k: statistics.median(r[k] for r in runs) for k in MILESTONES}
    print("median: " + "  ".join(f"{k} {v:.1f} s" for k, v in medians.items()))


if __name__ == "__main__":
    main()
