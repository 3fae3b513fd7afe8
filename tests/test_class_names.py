"""class_names.json: written by training next to the model, read back without the dataset."""
import json
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from resbackbones.engine.class_names import (
    CLASS_NAMES_FILE,
    read_class_names,
    write_class_names,
)


@pytest.fixture
def registered():
    """A training set whose class names are known only once it is loaded (like a COCO json)."""
    name = "class_names_test_train"

    def load():
        MetadataCatalog.get(name).set(thing_classes=["ship", "buoy"],
                                      thing_dataset_id_to_contiguous_id={11: 0, 12: 1})
        return []

    DatasetCatalog.register(name, load)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_written_at_the_end_of_training_and_read_back(registered, tmp_path):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (registered,)
    cfg.DATASETS.TEST = ("not_registered_val",)
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    path = write_class_names(cfg)
    assert path == os.path.join(cfg.OUTPUT_DIR, CLASS_NAMES_FILE)
    assert json.load(open(path)) == {"thing_classes": ["ship", "buoy"], "dataset": registered,
                                     "thing_dataset_id_to_contiguous_id": {"11": 0, "12": 1}}
    saved = read_class_names(cfg.OUTPUT_DIR)
    assert saved.thing_classes == ["ship", "buoy"] and saved.dataset == registered
    assert saved.thing_dataset_id_to_contiguous_id == {11: 0, 12: 1}


def test_nothing_written_without_class_names(tmp_path, caplog):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("not_registered_train",), ()
    cfg.OUTPUT_DIR = str(tmp_path)
    assert write_class_names(cfg) is None
    assert "no class_names.json" in caplog.text and os.listdir(tmp_path) == []
    assert read_class_names(str(tmp_path)) is None


def test_bad_file_names_itself(tmp_path):
    (tmp_path / CLASS_NAMES_FILE).write_text(json.dumps({"thing_classes": "circle"}))
    with pytest.raises(ValueError, match=f"{CLASS_NAMES_FILE} is not a valid class-names file"):
        read_class_names(str(tmp_path))
