"""The generated dataset; ``synthetic`` needs only numpy/OpenCV, registration needs Detectron2."""
