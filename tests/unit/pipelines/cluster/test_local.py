"""The local Ray's Ray Train settings: set where the user has not, carried to the controller."""

import os

from ray.train.v2._internal import constants as train_constants

from pipelines.cluster.local import LOCAL_TRAIN_ENV, local_train_env


def test_the_defaults_fill_only_what_the_user_left_unset():
    environ = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "3", "PATH": "/bin"}
    added = local_train_env(environ)
    assert added == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"  # the user's value stays
    assert environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert local_train_env(environ) == {}  # a second start changes nothing


def test_ray_train_carries_each_setting_from_the_driver_to_its_controller(monkeypatch):
    # a name Ray Train stopped reading would leave its default in place silently: each must
    # still be one that Ray Train hands from the driver to the controller and the workers
    for key in LOCAL_TRAIN_ENV:
        monkeypatch.setenv(key, "")  # recorded as unset, so the test leaves it unset
        monkeypatch.delenv(key)
    assert not set(LOCAL_TRAIN_ENV) & set(train_constants.get_env_vars_to_propagate())
    local_train_env(os.environ)
    propagated = train_constants.get_env_vars_to_propagate()
    assert {k: propagated.get(k) for k in LOCAL_TRAIN_ENV} == LOCAL_TRAIN_ENV


def test_start_local_ray_sets_them_before_ray_starts(monkeypatch):
    # Ray's processes inherit the environment ray.init finds, and the controller's comes from it
    from pipelines.cluster import local

    for key in LOCAL_TRAIN_ENV:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    seen = {}
    monkeypatch.setattr(local.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(local.ray, "init", lambda **kw: seen.update(os.environ))
    monkeypatch.setattr(local.ray, "cluster_resources", lambda: {"CPU": 2.0})
    local.start_local_ray(2)
    assert {k: seen.get(k) for k in LOCAL_TRAIN_ENV} == LOCAL_TRAIN_ENV
