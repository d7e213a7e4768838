"""The enhanced ResNet34 and what its users import: the network, and from a checkpoint to
predictions.

The network itself is machinery/network.py; this file is the import its users write, as
in the reference (`from model import ResNet34`). Inference, as in the reference README
(its checkpoints or this repo's):

    model = ResNet34(num_classes=100)
    model.load_state_dict(torch.load("checkpoints/best_model.pt")["model_state_dict"])

or, rebuilding whatever network a checkpoint holds from the file alone:

    model, ckpt = model_from_checkpoint("checkpoints/best_model.pt")

or, for predictions on your own pictures (paths, folders, PIL images or uint8 arrays, any
size), batched through the network while worker processes decode the next ones:

    clf = load_classifier("checkpoints/best_model.pt")
    predict(clf, ["cat.jpg"], k=3)   # [[("cat", 0.71), ("tiger", 0.08), ("fox", 0.05)]]
    for p in predictions(clf, ["photos/"]):   # a generator, for any number of files
        print(p.source, p.top or p.error)

Names that were defined here once (checkpoint files, image decoding) are imported below,
so `from model import load_checkpoint` and the like keep working.
"""
from machinery.network import (SEED_BLOCKS, SEED_WIDTH, BasicBlock, ResNet,  # noqa: F401
                               ResNet34, build_model, count_parameters, get_resnet34,
                               model_from_checkpoint)
# Defined elsewhere since the house was split; imported from here by earlier code.
from machinery.checkpoint_files import (CheckpointError, atomic_path, check_model_args,  # noqa: F401
                                        dataset_of, fill_metadata, find_latest_checkpoint,
                                        init_from_checkpoint, load_checkpoint, load_weights,
                                        model_args_from_state_dict, network_name,
                                        periodic_checkpoints, position_of, save_checkpoint,
                                        upgrade_state_dict)
from machinery.images import load_image, normalize, standardize  # noqa: F401
# From a checkpoint to predictions: one picture or thousands (machinery/predicting.py)
from machinery.predicting import (Classifier, Prediction, load_classifier,  # noqa: F401
                                  predict, predictions)
