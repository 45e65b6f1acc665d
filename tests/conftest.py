import os

from hypothesis import HealthCheck, settings

# Property tests run on shared 2-core CI machines: no per-example deadline.
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
