"""The appendix's analyses as works of the execution core (flexeval/execute.py `Answers`): each batch
is answered by greedy generation, then the asked row's attention maps (FlexLlava.attention_maps,
flexeval/analysis/attention.py); what a record keeps of the maps is the work's:

- `GroundingWork` (`flexeval grounding`, A.3): the official GQA grounding score of the map at
  every asked layer (flexeval/analysis/grounding.py), and afterwards <out>/<tag>/grounding.json,
  <out>/grounding.csv and <out>/grounding.png;
- `AttentionWork` (`flexeval attention --bench`, A.2): one picture per item.

So both get the core's plan, per-rank shares, image workers, batching with out-of-memory back-off,
crash-safe store appends (resume after a kill), the run lock and run.json, with no runner of their own.
"""

from __future__ import annotations

from pathlib import Path

from flexeval.errors import FlexEvalError
from flexeval.execute import Answers, generation_record
from flexeval.requests import Generate

ANSWER_TOKENS = 16  # the answer length for a request that does not generate (a Choice), as before


class MapsWork(Answers):
    """Greedy answer, then the maps of the `token` row (flexeval/analysis/attention.py parse_token) at `layers`."""

    name = "maps"

    def __init__(self, layers: list[int], token: int, max_new_tokens: int | None = None):
        self.layers, self.token, self.max_new_tokens = list(layers), token, max_new_tokens

    def settings(self) -> dict:
        return {"work": self.name, "layers": self.layers, "token": self.token}

    def adapt(self, request) -> Generate:
        """Every request is answered by generation, on the padded square the maps are drawn over, long
        enough to hold the asked row's token."""
        n = self.max_new_tokens or (request.max_new_tokens if isinstance(request, Generate) else ANSWER_TOKENS)
        return Generate(question=request.question, max_new_tokens=max(n, self.token + 1), system=request.system)

    def answer(self, model, ready: list, sizer) -> None:
        sizer.run(ready, lambda part: self._answer(model, part))  # the pair of calls backs off together

    def _answer(self, model, part: list) -> list:
        from flexeval.analysis.attention import continuation_for

        gens = model.generate([(it.request, image) for it, image in part])
        mapped = []
        for (it, image), gen in zip(part, gens):
            it.record = generation_record(it.request, gen)
            try:
                mapped.append((it, image, continuation_for(self.token, gen.token_ids, it.sample.id)))
            except FlexEvalError as e:  # the answer is shorter than --token N: a counted row without a map
                it.record.update({"no_map": str(e), **self.empty()})
        if mapped:
            maps = model.attention_maps([model.prompt_text(it.request) for it, _, _ in mapped],
                                        [image for _, image, _ in mapped], [c for _, _, c in mapped], self.layers)
            for (it, image, _), m in zip(mapped, maps):
                it.record.update(self.fields(it, m, image))
        return [None] * len(part)

    def empty(self) -> dict:
        """The record's fields of this work for an item without a map."""
        return {}

    def fields(self, item, maps, image) -> dict:
        """The record's fields of this work from one item's maps (model.flex_llava.AttentionMaps)."""
        raise NotImplementedError


class GroundingWork(MapsWork):
    """Per layer, the official grounding score of the M x M map over the original frame."""

    name = "grounding"
    folder = "grounding"  # <out>/<tag>/gqa/grounding/: apart from a `run` of the same benchmark

    def __init__(self, layers: list[int], token: int, map_size: int, data_dir: Path, out: Path, about: dict):
        """about: what grounding.json says of the model and the command (kind, select_layer, token, config)."""
        from flexeval.benchmarks.gqa import QUESTIONS, SCENES, load_questions, load_scenes

        super().__init__(layers, token)
        self.map_size, self.data_dir, self.out, self.about = map_size, Path(data_dir), Path(out), about
        self.questions = load_questions(self.data_dir / QUESTIONS)
        self.scenes = load_scenes(self.data_dir / SCENES)
        self.summary: dict | None = None  # grounding.json as written (rank 0, once finished)

    def settings(self) -> dict:
        # 3: records of the core (the answer's generation fields, run.json) holding each layer's stored map
        return super().settings() | {"map_size": self.map_size, "flexeval_grounding": 3}

    def empty(self) -> dict:
        return {"scores": {}}

    def fields(self, item, maps, image) -> dict:
        """The per-layer official scores and the M x M maps they were computed from (the attention files' input)."""
        from flexeval.analysis.attention_files import layer_entries
        from flexeval.benchmarks.gqa import QUESTIONS, SCENES

        q = self.questions[item.sample.id]
        scene = self.scenes.get(str(q["imageId"]))
        if scene is None:
            raise FlexEvalError(f"{self.data_dir / SCENES}: no scene graph for image {q['imageId']} "
                                f"(question {item.sample.id})")
        where = f"{self.data_dir / QUESTIONS} question {item.sample.id}"
        return layer_entries(maps.maps, image.orig_size, q, scene, self.layers, self.map_size, where)

    def finish(self, plan, records: list[dict], run: dict) -> dict:
        """<out>/<tag>/grounding.json (this run's per-layer means), then grounding.csv/png over <out>."""
        from flexeval.analysis.attention import token_label
        from flexeval.analysis.attention_files import write_attention_files
        from flexeval.analysis.grounding import SUMMARY, summary_rows, write_grounding_tables
        from flexeval.execute import log
        from flexeval.results.store import write_json_atomic

        rows = summary_rows(records, self.layers)
        no_map = sum(1 for r in records if r.get("skipped") or r.get("no_map"))
        folder = self.out / run["model"]["tag"]
        files = write_attention_files(records, self.layers, self.map_size, folder)  # the official eval.py's input
        timing = dict(run["timing"])
        timing["questions_per_s"] = round(timing["ran"] / timing["wall_s"], 3) if timing.get("wall_s") else None
        summary = {"model": run["model"]["tag"], **self.about, "query_row": token_label(self.token),
                   "map_size": self.map_size, "layers": rows, "skipped": no_map,
                   "config_fingerprint": run["config_fingerprint"],
                   "data": {"dir": str(self.data_dir.resolve()), "questions": len(records)},
                   "timing": timing, "records": str(plan.out_dir / "predictions.jsonl"),
                   "attention_files": [str(f) for f in files]}
        path = folder / SUMMARY
        write_json_atomic(path, summary)
        log(f"[grounding] {timing['ran']} questions in {timing['wall_s']:.1f} s: {timing['questions_per_s']} "
            f"questions/s; attention files for the official eval.py: {files[0].parent if files else '-'}")
        if no_map:
            log(f"[grounding] {no_map} questions have no map and score 0 (marked 'skipped' or 'no_map' in "
                f"{summary['records']})")
        csv_path, png_path = write_grounding_tables(self.out)
        self.summary = summary | {"files": {"csv": str(csv_path), "png": str(png_path)}}
        return {"layers": rows, "map_size": self.map_size, "query_row": token_label(self.token),
                "summary": str(path), "attention_files": str(files[0].parent) if files else None}


class AttentionWork(MapsWork):
    """One picture per item (flexeval/analysis/attention.py render) in the work's folder."""

    name = "attention"
    folder = "attention"  # <out>/<tag>/<bench>/attention/: the pictures, beside the records

    def __init__(self, layers: list[int], token: int, max_new_tokens: int | None, pictures: Path,
                 style: str = "flexeval", strip: int | None = None, model=None, max_image_pixels: int | None = None):
        """style: flexeval | release | both (flexeval/analysis/attention.py draw); strip: a layer whose
        per-answer-token maps are drawn too (needs `model`)."""
        super().__init__(layers, token, max_new_tokens)
        self.pictures, self.style, self.strip, self.model = Path(pictures), style, strip, model
        self.max_image_pixels = max_image_pixels  # the run's --max-image-pixels: the picture reopens the image
        self.written: list[Path] = []  # every item's picture (rank 0, once finished; drawn now or before)

    def settings(self) -> dict:
        return super().settings() | {"style": self.style, "strip": self.strip}  # other pictures, other records

    def finish(self, plan, records: list[dict], run: dict) -> dict:
        self.written = [self.pictures / name for r in records for name in r.get("pictures") or
                        ([r["picture"]] if r.get("picture") else [])]
        return {"layers": self.layers, "pictures": str(self.pictures), "drawn": len(self.written)}

    def fields(self, item, maps, image) -> dict:
        from flexeval.analysis.attention import MapResult, draw, draw_strip
        from flexeval.benchmarks.base import open_image

        s = item.sample
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.id) + ".png"
        answer = item.record["prediction"] or ""
        result = MapResult(answer, item.record["generated_ids"], maps, self.token)
        pil = open_image(s.image, where=s.id, **({"max_pixels": self.max_image_pixels} if self.max_image_pixels else {}))
        written = draw(pil, result, s.question, self.layers, self.pictures / name, self.style,
                       title_extra=f"  item {s.id}")
        if self.strip is not None:
            written.append(draw_strip(self.model, self.model.prompt_text(item.request), image, pil, s.question,
                                      self.strip, self.pictures / name, item.request.max_new_tokens))
        return {"picture": written[0].name, "pictures": [p.name for p in written]}
