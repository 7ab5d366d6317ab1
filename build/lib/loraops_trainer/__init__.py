"""The loraops QLoRA trainer: dolly-style data in, a LoRA adapter and/or a merged model out."""
