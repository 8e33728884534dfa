"""Avro codecs in Confluent framing and the schema registries behind them."""
