"""Several concepts erased in one run (`concept:` a list): what they share, checked before any work.

Each entry is a concept spec of its own (derived the same way, trust/concepts/neighbours.py). One
run erases all of them and keeps what none of them is:
- the kept concepts are every entry's `keep`, once, less any label set that *is* an erased concept
  (it shows every label of some entry's `detect`: erasing the red circle and the blue square, the
  red circle's derived neighbour "blue circle" stays kept, a neighbour "blue square" is erased);
- a preservation prompt that shows an erased concept is dropped (the red circle's derived "a blue
  square" would keep what the second entry erases).
Derived entries are filtered silently; an entry the user wrote that contradicts another concept is
an error naming it (`cross_problems`). Torch-free.
"""

from __future__ import annotations

from trust.concepts.words import expand, labels_of


def shows(labels: dict[str, str], want: dict[str, str]) -> bool:
    return all(labels.get(h) == v for h, v in want.items())


def erased_by(labels: dict[str, str], concepts) -> list[int]:
    """Indices of the concepts whose every `detect` label `labels` shows."""
    return [i for i, c in enumerate(concepts) if shows(labels, c.detect)]


def joint_keep(concepts) -> list[dict[str, str]]:
    """The kept concepts of a run erasing `concepts` (resolved): each entry's `keep`, once, in order,
    less the label sets that show an erased concept. One concept: its `keep` as it is."""
    out, seen = [], set()
    for c in concepts:
        for want in c.keep or []:
            key = tuple(sorted(want.items()))
            if key not in seen and not erased_by(want, concepts):
                seen.add(key)
                out.append(dict(want))
    return out


def joint_name(concepts) -> str:
    """What the run erases, in reports and registry descriptions: 'red circle + blue square'."""
    return " + ".join(c.name for c in concepts)


def field_of(i: int, n: int, field: str) -> str:
    """`concept.keep[0]` of entry `i` as the user wrote it: `concept[i].keep[0]` when there are several."""
    return field if n == 1 else field.replace("concept.", f"concept[{i}].", 1)


def cross_problems(concepts, origins: list[dict], world: bool = True) -> list[str]:
    """Problems between the entries of a concept list (resolved `concepts`, `origins` from
    neighbours.resolve_with_origins): unique names; on the world (labels the code can read) no entry
    is another's target, and no kept concept or preservation template the user wrote shows another
    entry's target."""
    n, out = len(concepts), []
    seen: dict[str, int] = {}
    for i, c in enumerate(concepts):
        if c.name in seen:
            out.append(f"concept[{i}].name: {c.name!r} is also concept[{seen[c.name]}]'s name; names key each "
                       "concept's metrics, gates and grids: give each entry its own")
        seen.setdefault(c.name, i)
        if not world:
            continue
        for j, other in enumerate(concepts):
            if j != i and shows(c.detect, other.detect) and (j < i or not shows(other.detect, c.detect)):
                out.append(f"concept[{i}].detect {c.detect}: shows every label of concept[{j}].detect "
                           f"{other.detect}, so erasing concept[{j}] erases it already; remove one of the two")
                break
    for i, c in enumerate(concepts if world else []):
        others = [o for j, o in enumerate(concepts) if j != i]
        for k, want in enumerate(c.keep):
            hit = erased_by(want, others)
            where = origins[i]["keep"][k] if k < len(origins[i].get("keep", [])) else f"concept.keep[{k}]"
            if hit and "derived" not in where:
                out.append(f"{field_of(i, n, where)}: {want} is {others[hit[0]].name!r}, which this run erases; "
                           "it cannot also be kept: remove it")
        for k, template in enumerate(c.preserve):
            where = origins[i]["preserve"][k] if k < len(origins[i].get("preserve", [])) else f"concept.preserve[{k}]"
            if "derived" in where:
                continue
            for prompt, _ in expand(template):
                hit = erased_by(labels_of(prompt), others)
                if hit:
                    out.append(f"{field_of(i, n, where)}: {template!r} gives {prompt!r}, which shows "
                               f"{others[hit[0]].name!r}, erased by this run: a preservation prompt would keep it; "
                               "name other values or remove it")
                    break
    return out
