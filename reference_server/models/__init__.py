"""Model preparation for the GPU engine: Hugging Face-format Llama directories that exllamav2 loads.

`python -m reference_server.models` turns the embedded SmolLM2 GGUF into FP16 safetensors plus
config and tokenizer files, and makes random-weight Llama-shaped models (with SmolLM2's
tokenizer) for throughput work. Everything here runs on the CPU with numpy only (no torch).
"""
