#!/usr/bin/env python
"""A small Gradio app: drop an image, get the ResUNet++ mask overlay, its area and confidence.

    python demo.py                                   # the quickstart's model
    python demo.py --config-file CONFIG --weights model_final.pth [--host 0.0.0.0] [--port 7861]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from resunetpp.predictor import SegmentationPredictor, predict_overlay  # noqa: E402

QUICKSTART_OUTPUT = "output/resunetpp_quickstart"


def build_app(predictor: SegmentationPredictor, examples=()):
    """The Gradio Blocks app around :func:`predict_overlay`."""
    import gradio as gr

    def segment(image):
        if image is None:
            return None, "Upload an image first."
        overlay, info = predict_overlay(predictor, image)
        text = (f"**Area:** {info['area_pixels']} pixels ({info['area_percent']:.1f}% of the "
                f"image)  \n**Confidence:** {info['confidence']:.3f} (mean probability of the "
                "predicted class over the predicted mask)")
        return overlay, text

    with gr.Blocks(title="ResUNet++ segmentation") as app:
        gr.Markdown("# ResUNet++ segmentation\nDrop an image; the mask is drawn in green.")
        with gr.Row():
            image = gr.Image(type="numpy", label="image", image_mode="RGB")
            overlay = gr.Image(type="numpy", label="mask overlay")
        info = gr.Markdown()
        button = gr.Button("Segment", variant="primary")
        button.click(segment, inputs=image, outputs=[overlay, info])
        image.upload(segment, inputs=image, outputs=[overlay, info])
        if examples:
            gr.Examples(list(examples), inputs=image)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=os.path.join(QUICKSTART_OUTPUT, "config.yaml"))
    parser.add_argument("--weights", default=os.path.join(QUICKSTART_OUTPUT, "model_final.pth"))
    parser.add_argument("--examples", default="datasets/synthetic_polyps/images",
                        help="folder of example images (first 6 are shown)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args()
    for path in (args.config_file, args.weights):
        if not os.path.isfile(path):
            parser.error(f"{path} not found: run `python train_net.py --quickstart` first, or "
                         "pass --config-file and --weights.")
    predictor = SegmentationPredictor(args.config_file, args.weights)
    examples = []
    if os.path.isdir(args.examples):
        examples = [os.path.join(args.examples, n) for n in sorted(os.listdir(args.examples))[:6]]
    build_app(predictor, examples).queue(max_size=16).launch(server_name=args.host,
                                                             server_port=args.port)


if __name__ == "__main__":
    main()
