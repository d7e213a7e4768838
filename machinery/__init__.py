"""The machinery behind the commands at the top of the repo (train.py, gradcam_utils.py,
export.py, hubconf.py): data, the network, checkpoints, the run's runtime, metrics and
pictures. One job per module; the README's *Project layout* names each. Nothing runs on
import."""
