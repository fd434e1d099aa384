"""Ingest (safetensors, Hugging Face folders, PEFT LoRA adapters), the SQL catalogue and the origin."""

__all__: tuple[str, ...] = ()
