"""CPU-only venv shim, installed by `make setup` as the venv's sitecustomize.

The only torchvision wheel on the index beside CPU torch 2.13.0 is a CUDA build whose
meta registrations reference ``torchvision::nms`` / ``torchvision::qnms``; without those
op schemas ``import torchvision`` (and so ``import sglang``) fails. We define the two
schemas (no kernels) right before torchvision is first imported. The hook is a
meta-path finder, so processes that never import torchvision (pip, the harness) pay
nothing, and every process SGLang spawns gets it because it lives in site-packages.
"""

import importlib.abc
import sys


class _TorchvisionSchemaShim(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" and not self.done:
            type(self).done = True
            try:
                import torch

                lib = torch.library.Library("torchvision", "DEF")
                lib.define(
                    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
                lib.define(
                    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
                # Keep the library object alive for the life of the process.
                sys.modules[__name__].__dict__["_torchvision_lib"] = lib
            except Exception:  # already defined (a real CPU torchvision) or no torch
                pass
        return None  # let the normal finders import torchvision


sys.meta_path.insert(0, _TorchvisionSchemaShim())
