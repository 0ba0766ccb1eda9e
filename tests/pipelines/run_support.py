"""Options, runs and output readers shared by the multi-worker and failure-injection tests."""

from __future__ import annotations

import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines.batch import RunSummary, build_batch_pipeline, summarize_run
from pipelines.options import SealbeamOptions
from pipelines.reading import open_outputs
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines import pipeline_hooks
from transforms.dead_letters import DEAD_LETTER_DIR

RECORDS_PER_KEY = 40            # what tests.pipelines.helpers.sealed_partner_files seals with


def batch_options(broker: BrokerEnv, input_pattern: str, output_root: Path, **extra: object
                  ) -> PipelineOptions:
    flags = {"input": input_pattern, "output_root": str(output_root), "broker_url": broker.url,
             "tee": "simulated-sev-snp", "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": ",".join(REGIONS), **extra}
    return PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()])


def worker_options(broker: BrokerEnv, input_pattern: str, output_root: Path, workers: int,
                   **extra: object) -> PipelineOptions:
    """``batch_options`` on ``workers`` worker processes (use the ``worker_processes`` fixture,
    so that they import this checkout)."""
    return batch_options(broker, input_pattern, output_root, direct_num_workers=workers,
                         direct_running_mode="multi_processing", **extra)


def run_with_hook(options: PipelineOptions, hook: str | None = None, directory: str = ""
                  ) -> RunSummary:
    """``run_batch`` with a ``pipeline_hooks`` DoFn after the confidential step."""
    def after_confidential(outputs: beam.PCollection) -> beam.PCollection:
        step = getattr(pipeline_hooks, hook)(directory)   # type: ignore[arg-type]
        return outputs | f"Hook{hook}" >> beam.ParDo(step)

    started = time.monotonic()
    pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
    built = build_batch_pipeline(pipeline, options,
                                 after_confidential=after_confidential if hook else None)
    result = pipeline.run()
    result.wait_until_finish()
    return summarize_run(result, options.view_as(SealbeamOptions), built, started)


def output_names(root: Path) -> set[str]:
    """Every file under ``root`` (relative), temporary ones included."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def output_rows(broker: BrokerEnv, root: Path, region: str) -> list[tuple]:
    """The region's output rows, opened as its reader would, sorted (a multiset)."""
    if not any((root / region).glob("part-*")):
        return []
    table = open_outputs([root / region], keyring=broker.keyring, region=region)
    return sorted(tuple(map(repr, row.values())) for row in table.to_pylist())


def dead_letter_ids(root: Path) -> list[str]:
    import json
    return sorted(json.loads(line)["record_id"]
                  for f in (root / DEAD_LETTER_DIR).glob("dl-*.jsonl")
                  for line in f.read_bytes().splitlines())
