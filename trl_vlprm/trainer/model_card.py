# ruff: noqa: E501  (a Markdown/BibTeX template: its lines are the card's lines)
"""The model card written beside every checkpoint and pushed with the model, as TRL trainers do."""

from __future__ import annotations

import textwrap
from importlib.metadata import version

from huggingface_hub import ModelCard, ModelCardData

PAPER = {
    "title": "Training Vision-Language Process Reward Models for Test-Time Scaling in Multimodal Reasoning: Key "
    "Insights and Lessons Learned",
    "id": "2509.23250",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @article{ong2025training,
            title        = {{Training Vision-Language Process Reward Models for Test-Time Scaling in Multimodal Reasoning: Key Insights and Lessons Learned}},
            author       = {Ong, Brandon and Pala, Tej Deep and Toh, Vernon and Tjhi, William Chandra and Poria, Soujanya},
            year         = 2025,
            journal      = {arXiv preprint arXiv:2509.23250}
        }"""),
}

# Jinja template in the layout of TRL's `lm_model_card.md`, with a PRM quick start instead of text generation.
_TEMPLATE = """---
{{ card_data }}
---

# Model Card for {{ model_name }}

This model is a process reward model (PRM){% if base_model %} fine-tuned from [{{ base_model }}](https://huggingface.co/{{ base_model }}){% endif %}{% if dataset_name %} on the [{{ dataset_name }}](https://huggingface.co/datasets/{{ dataset_name }}) dataset{% endif %}.
It scores every step of a solution (head: `{{ head }}`, step separator: `{{ step_separator }}`) and has been trained with
`trl_vlprm`, on top of [TRL](https://github.com/huggingface/trl).

## Quick start

```python
from trl_vlprm import Candidate, PRMScorer

scorer = PRMScorer.from_pretrained("{{ hub_model_id or model_name }}")
question = {"prompt": "<image>What is the missing number?", "images": [image]}
scores = scorer.score(question, [Candidate(steps=["The circles read 4, 1, 6, ?.", "Answer: 4"])])  # P(step correct)
```

## Training procedure

This model was trained with {{ trainer_name }}{% if paper_id %}, the method of [{{ paper_title }}](https://huggingface.co/papers/{{ paper_id }}){% endif %}.

### Framework versions

- trl_vlprm: {{ trl_vlprm_version }}
- TRL: {{ trl_version }}
- Transformers: {{ transformers_version }}
- Pytorch: {{ pytorch_version }}
- Datasets: {{ datasets_version }}

## Citations

Cite {{ trainer_name }} as:

```bibtex
{{ trainer_citation }}
```

Cite TRL as:

```bibtex
{% raw %}@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}{% endraw %}
```
"""


def generate_model_card(
    model_name: str,
    base_model: str | None,
    hub_model_id: str | None,
    dataset_name: str | None,
    tags: list[str],
    trainer_name: str,
    paper: dict[str, str],
    head: str,
    step_separator: str,
) -> ModelCard:
    """A `huggingface_hub.ModelCard` for a trained PRM (same fields as TRL's `generate_model_card`)."""
    card_data = ModelCardData(
        base_model=base_model,
        datasets=dataset_name,
        library_name="transformers",
        licence="license",
        model_name=model_name,
        tags=["generated_from_trainer", *tags],
    )
    return ModelCard.from_template(
        card_data,
        template_str=_TEMPLATE,
        base_model=base_model,
        model_name=model_name,
        hub_model_id=hub_model_id,
        dataset_name=dataset_name,
        trainer_name=trainer_name,
        trainer_citation=paper["citation"],
        paper_title=paper["title"],
        paper_id=paper["id"],
        head=head,
        step_separator=repr(step_separator),
        trl_vlprm_version=version("trl_vlprm"),
        trl_version=version("trl"),
        transformers_version=version("transformers"),
        pytorch_version=version("torch"),
        datasets_version=version("datasets"),
    )
