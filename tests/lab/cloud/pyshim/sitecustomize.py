"""Makes the lab virt driver importable as nova.virt.vigil_lab_driver.

Nova loads `compute_driver` as 'nova.virt.' + its value, so a driver outside
Nova's tree needs a name under nova.virt.  run-compute puts this directory on
PYTHONPATH; Python imports sitecustomize at start-up, and this finder maps that
one module name to tests/lab/cloud/vigil_lab_driver.py.  Nothing is imported
here (Nova's eventlet monkey-patching must still come first) and Nova's own
files are not touched.
"""
import importlib.abc
import importlib.util
import os
import sys

_DRIVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "vigil_lab_driver.py")


class _LabDriverFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "nova.virt.vigil_lab_driver":
            return importlib.util.spec_from_file_location(name, _DRIVER)
        return None


sys.meta_path.insert(0, _LabDriverFinder())
