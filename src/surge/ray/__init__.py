"""surge on Ray: the engine inside Ray Data workers, one provider limit for the cluster.

    import ray, surge.ray

    processor = surge.ray.Processor(
        base_url="https://api.openai.com/v1", model="gpt-4o-mini", rpm=10_000,
        workers=8, concurrency_per_worker=64,
        preprocess=lambda row: {"messages": [{"role": "user", "content": row["q"]}]},
    )
    processor(ray.data.read_parquet("questions/")).write_parquet("answers/")

Every worker leases its share of the limit from one named actor (`shared="ray"` in
`surge.Limiter` terms), so the workers together keep to the key's RPM/TPM.
"""

from surge.ray._processor import RESULT_COLUMNS, Processor, answered_ids

__all__ = ["RESULT_COLUMNS", "Processor", "answered_ids"]
