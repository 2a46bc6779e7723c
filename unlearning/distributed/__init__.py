"""Beyond one machine, on standard engines: the stress grid as Ray tasks (`ray_executor`, imported only when
``executor="ray"`` is asked for; ``pip install 'worstforget[ray]'``) and one model trained over several
processes with torch DDP under ``torchrun`` (`ddp`, the ``worstforget train`` command). See
docs/distributed.md."""
