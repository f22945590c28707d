"""Parameter accounting for any method, with SimKD's pruning ratio (seed 003, paper Fig. 6 / Table S.10).

``parameter_report(method)`` -> a flat dict of JSON-ready numbers the trainer can merge into
``summary.json`` for every run:

- ``params_student``: the student network as built (encoder + its own classifier);
- ``params_student_classifier``: its classifier head (``classifier_head()``: what maps the final map to logits);
- ``params_teachers`` / ``params_teacher_classifiers``: per teacher;
- ``params_method_modules``: learnable modules of the method itself (regressors, projectors, embeddings,
  attention networks), i.e. parameters owned neither by the student nor by a teacher;
- ``buffer_elements_method``: the method's own buffers (e.g. CRD's memory bank);
- ``params_deployed``: what inference needs: the student, or for SimKD the student encoder + the
  inference projector(s) + the reused teacher classifier(s) (training-only projectors excluded);
- ``pruning_ratio`` = 1 - params_deployed / params_teacher (the teacher's count; with several teachers,
  their sum, the ensemble the student replaces). For a plain student this is the "vanilla KD" line of the
  paper's Fig. 6; for SimKD it is seed 003's formula

      1 - (#param_se + #param_proj + Delta) / #param_t,   Delta = #param_tc - #param_sc,

  where #param_se is the student's full count as built (Table S.10 gives the plain resnet8x4 student
  83.40% = 1 - #student / #teacher, so #param_se there includes the student classifier, and the sum
  equals encoder + projector + teacher classifier).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdistill.methods.base import Method
from kdistill.models.taps import count_parameters


def _unique_parameters(modules: list[nn.Module]) -> set[int]:
    return {id(p) for module in modules for p in module.parameters()}


def _count_ids(module: nn.Module, ids: set[int]) -> int:
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in ids and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def classifier_count(model: nn.Module) -> int | None:
    """Parameters of a model's classifier head (``classifier_head()``), or None when it has none."""
    classifier_head = getattr(model, "classifier_head", None)  # any module may define one, tapped or not
    if classifier_head is None:
        return None
    try:
        return count_parameters(classifier_head())
    except (AttributeError, NotImplementedError):
        return None


def parameter_report(method: Method[Any]) -> dict[str, Any]:
    """Parameter counts of a method's student, teachers and own modules, and the pruning ratio."""
    student = method.student
    teachers = list(method.teachers)
    owned_elsewhere = _unique_parameters([student, *teachers])
    own_ids = {id(p) for p in method.parameters()} - owned_elsewhere
    own_buffer_elements = sum(
        b.numel() for name, b in method.named_buffers() if not name.startswith(("student.", "teachers."))
    )
    report: dict[str, Any] = {
        "params_student": count_parameters(student),
        "params_student_classifier": classifier_count(student),
        "params_teachers": [count_parameters(t) for t in teachers],
        "params_teacher_classifiers": [classifier_count(t) for t in teachers],
        "params_method_modules": _count_ids(method, own_ids),
        "buffer_elements_method": own_buffer_elements,
    }
    teacher_total = sum(report["params_teachers"])
    deployed = method.deployed_parameters()  # the method decides what inference needs
    report.update(deployed)
    report["pruning_ratio"] = 1.0 - deployed["params_deployed"] / teacher_total if teacher_total else None
    return report
