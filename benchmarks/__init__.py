"""Benchmarks of lora_core against the seed's code, loralib and PEFT (see benchmarks/run.py)."""
