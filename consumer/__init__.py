"""loyalty-consumer: exactly-once Voucherify pending-points activations from Kafka to Kafka."""

__version__ = "0.1.0"
__all__ = ["__version__"]
