"""Configuration files shipped with Loopline: ``gates.yaml`` is the gate policy (see ``loopline.gates``)."""
