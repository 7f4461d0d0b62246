"""``trimtune generate RUN_OR_MODEL --prompt TEXT``: text from a causal-LM run's model as the run left it
(its adapter, prompt or diff unmerged, nothing written), or from a Hugging Face causal LM directory."""

from __future__ import annotations

from .common import add_quiet, add_run_dir, show
from .perplexity import load_causal_lm


def add_generate(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a causal-LM run (adapter unmerged) or model directory",
                              description="Loads a tune run (or a shrink output, or a Hugging Face causal LM directory) "
                                          "as it was left, without merging, and continues each prompt.")
    add_run_dir(p, made_by="tune on a causal LM, shrink, or a Hugging Face causal LM directory", metavar="RUN_OR_MODEL")
    p.add_argument("--prompt", action="append", required=True, help="text to continue (repeatable: one generation each)")
    p.add_argument("--chat", action="store_true", help="send each prompt as a user turn through the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add to each prompt (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sample at this temperature")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (default: %(default)s)")
    add_quiet(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be 0 (greedy) or positive, got {args.temperature}")
    model, tokenizer = load_causal_lm(args.run_dir, args.check_base, "generate")
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--chat needs a chat template, and the tokenizer of {args.run_dir} has none; drop --chat")
    results = [{"prompt": prompt, "completion": continue_text(model, tokenizer, prompt, args)} for prompt in args.prompt]
    show("generate", results)
    return 0


def continue_text(model, tokenizer, prompt: str, args) -> str:
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True) \
        if args.chat else prompt
    # a rendered chat already holds its special tokens; plain text gets the tokenizer's usual ones (e.g. BOS)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not args.chat)["input_ids"]
    device = next(model.parameters()).device
    ids = ids.to(device)
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(args.seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                             pad_token_id=pad, **sampling)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
