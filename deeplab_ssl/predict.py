"""`python -m deeplab_ssl.predict`: the former name of the repository's predict.py, which it runs
(in a source checkout), for the commands written with that name."""
import os
import runpy

if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "predict.py"), run_name="__main__")
