"""``--workers auto``: the cores a process may use, its cgroups' CPU limit included.

Each test lays out a process's view of its cgroups as files (``/proc/self/cgroup``,
``/proc/self/mountinfo`` and the cgroup directories they point at), the way the kernel shows them
to a process on a cgroup v2 host, a v1 host, a hybrid one and in a container.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.workers import available_cores, cgroup_cpu_limit

V2_MOUNT = "30 23 0:26 / {point} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_CPU_MOUNT = "32 31 0:29 {root} {point} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
V1_OTHER_MOUNT = "34 31 0:31 / {point} rw,relatime - cgroup cgroup rw,cpuset\n"


def view(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text + "\n")


def test_a_v2_limit_on_the_process_cgroup_counts(tmp_path: Path) -> None:
    mount = tmp_path / "sys-fs-cgroup"
    write(mount / "kubepods" / "pod1", cpu__max="max 100000")
    write(mount / "kubepods" / "pod1" / "ctr", cpu__max="150000 100000")
    proc = view(tmp_path, "0::/kubepods/pod1/ctr\n", V2_MOUNT.format(point=mount))
    assert cgroup_cpu_limit(proc) == 1.5
    assert available_cores(proc) == min(len(os.sched_getaffinity(0)), 2)


def test_a_parent_cgroup_limit_binds_its_children(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    write(mount / "slice", cpu__max="50000 100000")
    write(mount / "slice" / "svc", cpu__max="max 100000")
    proc = view(tmp_path, "0::/slice/svc\n", V2_MOUNT.format(point=mount))
    assert cgroup_cpu_limit(proc) == 0.5
    assert available_cores(proc) == 1  # never 0 workers


def test_no_limit_leaves_the_affinity(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    write(mount / "user.slice", cpu__max="max 100000")
    proc = view(tmp_path, "0::/user.slice\n", V2_MOUNT.format(point=mount))
    assert cgroup_cpu_limit(proc) is None
    assert available_cores(proc) == len(os.sched_getaffinity(0))


def test_a_container_sees_its_own_cgroup_as_the_mount_root(tmp_path: Path) -> None:
    # cgroup namespaces: /proc/self/cgroup says "/", and the mount's root is the container's cgroup.
    mount = tmp_path / "cg"
    write(mount, cpu__max="100000 100000")
    proc = view(tmp_path, "0::/\n", V2_MOUNT.format(point=mount))
    assert cgroup_cpu_limit(proc) == 1.0
    assert available_cores(proc) == 1


def test_v1_quota_over_period_under_a_docker_mount_root(tmp_path: Path) -> None:
    # Without a cgroup namespace a v1 container's mount root is its own cgroup on the host.
    mount = tmp_path / "sys" / "fs" / "cgroup" / "cpu,cpuacct"
    write(mount, cpu__cfs_quota_us="100000", cpu__cfs_period_us="100000")
    proc = view(
        tmp_path,
        "5:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/system.slice\n",
        V1_OTHER_MOUNT.format(point=tmp_path / "cpuset")
        + V1_CPU_MOUNT.format(root="/docker/abc", point=mount),
    )
    assert cgroup_cpu_limit(proc) == 1.0
    assert available_cores(proc) == 1


def test_v1_without_a_quota_and_a_hybrid_v2_without_cpu_is_no_limit(tmp_path: Path) -> None:
    # A hybrid host: v1 holds the cpu controller (no quota: -1), v2 is mounted without it.
    v1 = tmp_path / "cpu"
    write(v1, cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    unified = tmp_path / "unified"
    unified.mkdir()
    proc = view(
        tmp_path,
        "1:cpu:/\n0::/\n",
        V1_CPU_MOUNT.format(root="/", point=v1) + V2_MOUNT.format(point=unified),
    )
    assert cgroup_cpu_limit(proc) is None


def test_a_mount_point_with_a_space_is_unescaped(tmp_path: Path) -> None:
    mount = tmp_path / "with space"
    write(mount / "a", cpu__max="200000 100000")
    escaped = str(mount).replace(" ", "\\040")
    proc = view(tmp_path, "0::/a\n", V2_MOUNT.format(point=escaped))
    assert cgroup_cpu_limit(proc) == 2.0


def test_unreadable_or_malformed_files_are_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "no-proc") is None
    mount = tmp_path / "cg"
    write(mount, cpu__max="garbage")
    proc = view(tmp_path, "0::/\nnot a cgroup line\n", "short line\n" + V2_MOUNT.format(point=mount))
    assert cgroup_cpu_limit(proc) is None
    # A cgroup outside the mount (a path the mount's root does not hold) is not read.
    write(mount, cpu__max="100000 100000")
    outside = view(tmp_path, "0::/elsewhere\n", V2_MOUNT.format(point=mount).replace(" / ", " /inside "))
    assert cgroup_cpu_limit(outside) is None
