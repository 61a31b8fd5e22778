"""MLflow models-from-code pyfunc for a dataassess model: safetensors weights + HF config/tokenizer.

Logged by path, so nothing is pickled. predict(texts) -> perplexity per text.
"""

from __future__ import annotations

import math

import mlflow
import torch


class SafetensorsCausalLM(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from dataassess.weights import load_weights

        folder = context.artifacts["hf_folder"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        load_weights(self.model, context.artifacts["weights"])
        self.model.eval()

    def predict(self, context, model_input: list[str], params=None) -> list[float]:
        texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
        out = []
        with torch.inference_mode():
            for text in texts:
                ids = [self.tokenizer.eos_token_id] + self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([ids[: self.model.config.max_position_embeddings]])
                out.append(math.exp(self.model(input_ids=ids, labels=ids).loss.item()))
        return out


mlflow.models.set_model(SafetensorsCausalLM())
