"""The help of every curation job field, one text for the `sftlab curate` option and the job's field description
(plain strings, so the command line shows its help without importing pydantic)."""

VLLM_HELP = ("vLLM engine option KEY=VALUE, repeatable (tensor_parallel_size, data_parallel_size, "
             "gpu_memory_utilization, max_model_len); used when the local engine is vLLM.")

COMMON = {
    "prompts": "Prompt source (any reader).",
    "out": "Output JSONL; re-run to resume.",
    "base_url": "OpenAI-compatible endpoint; repeat for several (least-loaded).",
    "api_key_env": "Environment variable holding the API key.",
    "adapter": "LoRA adapter (a folder) applied to the local model.",
    "format": "Record format of the prompts; detected when 'auto'.",
    "max_new_tokens": "Token budget of each reply.",
    "temperature": "Sampling temperature (0: greedy).",
    "top_p": "Nucleus sampling: sample from the tokens holding this much probability.",
    "seed": "Sampling seed.",
    "max_prompts": "Curate only the first N prompts.",
    "batch_size": "Prompts per generation batch.",
    "no_cache": "Keep no generation cache beside the output.",
    "vllm": VLLM_HELP + " In a recipe also a mapping of these keys.",
}

DISTILL = {
    **COMMON,
    "prompts": "Prompt source (any reader); an existing reply becomes ignored.",
    "teacher": "Teacher model, or model name at --base-url.",
    "out": "Output JSONL (messages + provenance); re-run to resume.",
    "base_url": "OpenAI-compatible endpoint (vLLM, llama.cpp, sftlab serve...); "
                "repeat for several serving the same model (least-loaded).",
    "system": "System prompt for the teacher.",
    "n": "Replies per prompt.",
    "keep_unfinished": "Keep replies that hit max_new_tokens.",
}

BEST_OF_K = {
    **COMMON,
    "prompts": "Prompts with reference answers (e.g. gsm8k/train.jsonl).",
    "policy": "Policy model (usually the model to train).",
    "reward": "gsm8k|numeric|exact|normalized|json_valid|judge|reward_model:PATH|module:function",
    "judge": "Judge model for --reward judge.",
    "k": "Samples per prompt.",
    "select": "best | all",
    "min_score": "Keep only samples scoring at least this.",
    "system": "System prompt for the policy (e.g. how to lay out its reasoning); kept in the output records.",
    "keep_unfinished": "Keep samples that hit max_new_tokens (else they are never kept).",
}
