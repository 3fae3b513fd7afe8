"""Suite-wide settings.

CPU kernel choices (``resbackbones.modeling.kernel_choice``) are measured per machine and cached
in the user's cache directory; the suite must neither depend on what this machine measured nor
write there. So every test (and every process a test starts) uses the fixed rules;
tests/test_kernel_choice.py switches measuring on with a temporary cache directory.
"""
import os

os.environ["RESBACKBONES_CPU_TUNING"] = "off"
