"""From a distilled student to deployment: `famkd export` (ONNX, TorchScript, safetensors), checked against the
trained model, and `famkd predict` on image files with the export's own preprocessing.

A run folder's student.json (written when the run starts; famkd.engine.task.Task.student_card) says what
running the student needs: its architecture, classes and their names, input size and normalisation.
`famkd.deploy.student` loads a run's student with it, `famkd.deploy.formats` writes and reads the three
formats (each carries the card inside the file and in a JSON beside it), `famkd.deploy.export` and
`famkd.deploy.predict` are the commands.
"""
