"""loraops serving: a merged model, or a base model with many LoRA adapters chosen per request and mixed in one
batch, behind the SageMaker container contract. Plain Python (torch, transformers, safetensors): DJL's
``model.py`` and the local ASGI front are thin doors into it."""
