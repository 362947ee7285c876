"""Run by tests/integration/test_bounded_memory.py in its own process: a Ray with a deliberately
small object store streams a shard set several times its size into training views, while a
thread samples the store's use. Prints one JSON line."""

import json
import re
import sys
import threading
import time

import ray


def store_usage_mib() -> tuple[float, float]:
    """(plasma MiB in use now, MiB spilled so far), from Ray's memory summary."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(stats_only=True)
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    return (float(used.group(1)) if used else 0.0, float(spilled.group(1)) if spilled else 0.0)


def main(path: str, store_mib: int) -> None:
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=store_mib * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    from pipelines.config.layers import load_config, parse_set
    from pipelines.data.stream.source import training_dataset

    cfg = load_config(
        overrides=parse_set(
            [f"data.path={path}", "views.groups.global.size=16", "data.decode_tasks=2"]
        )
    )
    ds, manifest = training_dataset(cfg, path)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], store_usage_mib()[0])
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rows = 0
    for batch in ds.iter_batches(batch_size=32, batch_format="numpy"):
        rows += len(batch["label"])
    done.set()
    sampler.join()
    spilled = store_usage_mib()[1]
    dataset_mib = manifest.total_bytes / 2**20
    print(
        json.dumps(
            {
                "rows": rows,
                "peak_mib": peak[0],
                "spilled_mib": spilled,
                "dataset_mib": dataset_mib,
                "store_mib": store_mib,
            }
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
