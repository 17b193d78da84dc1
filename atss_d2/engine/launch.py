"""
``launch`` for machines with and without GPUs.

detectron2 0.6's ``launch`` starts one process per GPU over NCCL and fails in a spawned worker
("cuda is not available") on a machine without CUDA. :func:`launch` keeps detectron2's behaviour
where there are enough GPUs, starts ``num_gpus_per_machine`` CPU processes over gloo where there
is no CUDA at all (as later detectron2 releases do), and stops with a message giving the number
of GPUs found where there are some but too few.
"""

import logging
from datetime import timedelta
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

from ..config_checks import ConfigError

__all__ = ["launch"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = None,
    args=(),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """
    detectron2's ``launch`` (same arguments), plus CPU processes over gloo when the machine has
    no CUDA device: ``--num-gpus N`` then means N processes. Use ``MODEL.DEVICE cpu``.

    Raises:
        ConfigError: ``num_gpus_per_machine`` exceeds the CUDA devices of a machine that has some.
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if num_machines > 1 and _is_loopback(dist_url):
        # detectron2's parser fills in a loopback URL, which only processes of this machine
        # reach: without a --dist-url the other machines never join and this one just waits.
        logger.warning(
            f"--num-machines {num_machines} with --dist-url {dist_url}: only this machine can "
            "reach that address, so the others cannot join and this process waits for them "
            f"(up to {timeout}). Give every machine --dist-url tcp://<machine 0's address>:<port>"
        )
    if torch.cuda.is_available():
        found = torch.cuda.device_count()
        if num_gpus_per_machine > found:
            raise ConfigError(
                f"--num-gpus {num_gpus_per_machine}, but this machine has {found} CUDA "
                f"device{'s' if found != 1 else ''}; use --num-gpus {found} or fewer"
            )
        return detectron2_launch(
            main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
    if dist_url == "auto":
        dist_url = None
    if not dist_url:
        if num_machines > 1:
            raise ConfigError("--dist-url is needed for training on several machines")
        dist_url = "tcp://127.0.0.1:" + str(_free_port())
    logger.info(
        f"No CUDA device: starting {num_gpus_per_machine} CPU processes per machine over gloo"
    )
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _is_loopback(dist_url) -> bool:
    """Whether ``dist_url`` is a tcp:// address of this machine only (127.x, localhost, ::1)."""
    if not isinstance(dist_url, str) or not dist_url.startswith("tcp://"):
        return False
    host = urlparse(dist_url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_worker(
    local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout
):
    rank = machine_rank * per_machine + local_rank
    dist.init_process_group(
        "gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    # detectron2's get_local_rank() / get_local_size() read the group of this machine's ranks.
    num_machines = world_size // per_machine
    for i in range(num_machines):
        group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    # Two processes on a few cores: one torch thread each, or they slow each other down.
    torch.set_num_threads(max(1, torch.get_num_threads() // per_machine))
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
