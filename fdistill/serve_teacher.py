"""Serve a teacher for fdistill's served teacher signal (`pipeline.distill.teacher_signal=served`):

    python -m fdistill.serve_teacher --model DIR [--host 127.0.0.1] [--port 8000] [--max-logprobs 256]

Any decoder-only Hugging Face checkpoint, on this machine's CPU or GPU, behind the part of the OpenAI-compatible
API that vLLM and SGLang expose and fdistill uses: ``GET /v1/models``, ``POST /tokenize`` and ``POST
/v1/completions`` with token-id prompts and ``prompt_logprobs`` (the top-k log-probabilities of every prompt
position, the prompt's own token added, as vLLM returns them). On GPUs run vLLM instead, on GPUs of its own:
``vllm serve DIR --max-logprobs K`` (K ≥ pipeline.teacher_signal.k); this server is for CPU machines and tests.
Requests are served one at a time; the teacher runs batched within a request.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch

log = logging.getLogger("fdistill.serve_teacher")


class TeacherServer:
    """The model and the three endpoints' logic (transport-free, so it is callable directly too)."""

    def __init__(self, model_dir: str, max_logprobs: int = 256, name: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        if self.model.config.is_encoder_decoder:
            raise SystemExit(f"{model_dir} is an encoder-decoder model; the completions API serves decoder-only ones")
        self.name = name or model_dir
        self.max_logprobs = max_logprobs
        self.max_len = getattr(self.model.config, "max_position_embeddings", None)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "max_model_len": self.max_len}]}

    def tokenize(self, request: dict) -> dict:
        tokens = self.tokenizer(request["prompt"], add_special_tokens=request.get("add_special_tokens", True))["input_ids"]
        return {"tokens": tokens, "count": len(tokens), "max_model_len": self.max_len}

    @torch.no_grad()
    def completions(self, request: dict) -> dict:
        prompts = request["prompt"]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        if not prompts or not all(isinstance(prompt, list) and prompt for prompt in prompts):
            raise ValueError("prompt must be a non-empty list of token ids, or a list of such lists")
        k = int(request.get("prompt_logprobs") or 0)
        if k > self.max_logprobs:
            raise ValueError(f"Requested prompt logprobs of {k}, which is greater than max allowed: {self.max_logprobs}")
        vocab = len(self.tokenizer)
        if any(token < 0 or token >= vocab for prompt in prompts for token in prompt):
            raise ValueError(f"token ids must lie in [0, {vocab})")
        longest = max(len(prompt) for prompt in prompts)
        ids = torch.full((len(prompts), longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)], mask[row, : len(prompt)] = torch.tensor(prompt), 1
        log_probs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)[..., :vocab]
        choices = []
        for row, prompt in enumerate(prompts):
            entries: list[dict | None] = [None]
            if k:
                top_values, top_ids = log_probs[row, : len(prompt) - 1].topk(k, dim=-1)
                for position in range(1, len(prompt)):
                    scores = log_probs[row, position - 1]
                    entry = {str(int(token)): {"logprob": float(value), "rank": rank + 1}
                             for rank, (value, token) in enumerate(zip(top_values[position - 1], top_ids[position - 1],
                                                                       strict=True))}
                    actual = prompt[position]
                    if str(actual) not in entry:  # vLLM adds the prompt's own token with its rank
                        entry[str(actual)] = {"logprob": float(scores[actual]),
                                              "rank": int((scores > scores[actual]).sum()) + 1}
                    entries.append(entry)
            choices.append({"index": row, "text": "", "prompt_logprobs": entries if k else None, "logprobs": None,
                            "finish_reason": "length"})
        return {"object": "text_completion", "model": self.name, "choices": choices}


def _handler(server: TeacherServer):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, server.models())
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError"}})

        def do_POST(self) -> None:  # noqa: N802
            routes = {"/tokenize": server.tokenize, "/v1/completions": server.completions}
            route = routes.get(self.path.rstrip("/"))
            if route is None:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError"}})
                return
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(200, route(request))
            except (ValueError, KeyError, TypeError) as error:
                self._send(400, {"error": {"message": str(error), "type": "BadRequestError"}})

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            log.debug(format, *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fdistill.serve_teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a decoder-only checkpoint dir (or hub id)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-logprobs", type=int, default=256)
    parser.add_argument("--served-model-name", default=None)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    teacher = TeacherServer(args.model, args.max_logprobs, args.served_model_name)
    httpd = HTTPServer((args.host, args.port), _handler(teacher))
    print(f"fdistill teacher server: {teacher.name} on http://{args.host}:{httpd.server_port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    sys.exit(main())
