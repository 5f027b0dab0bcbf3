"""loyalty-consumer: exactly-once Voucherify pending-points activations from Kafka to Kafka.

Embedding the worker (the `loyalty-consumer run` command adds HTTP probes, signals and a
bounded shutdown: `run_worker`)::

    settings = Settings(kafka_bootstrap_servers="kafka:9092", database_url="sqlite:///l.db")
    store = await open_store(settings.database_url, migrate=True)
    worker = Worker(settings, store)
    try:
        await worker.run()  # until worker.stop()
    finally:
        await store.close()
"""

__version__ = "0.1.0"  # the one source: pyproject.toml reads it

from consumer.config import Settings, load_settings
from consumer.events import Apply, Invalid, Skip, Verdict, classify
from consumer.notifications import PendingPointsActivatedNotification
from consumer.service import run_worker
from consumer.store import Store, open_store
from consumer.worker import Worker

__all__ = [
    "Apply",
    "Invalid",
    "PendingPointsActivatedNotification",
    "Settings",
    "Skip",
    "Store",
    "Verdict",
    "Worker",
    "__version__",
    "classify",
    "load_settings",
    "open_store",
    "run_worker",
]
