"Packaging for diffuse_nb: everything is read from settings.ini (the nbdev 2 convention)."
from configparser import ConfigParser
import setuptools, shlex

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0','OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
lic = licenses[cfg['license'].lower()]
min_python = cfg['min_python']
console_scripts = [s for s in cfg.get('console_scripts', '').split() if s]
# a console script only once its module exists (the CLI notebook comes later in the learning order)
import os
console_scripts = [s for s in console_scripts
                   if os.path.exists(os.path.join(cfg['lib_path'], s.split('=')[1].split(':')[0].split('.')[-1] + '.py'))]

setuptools.setup(
    name = cfg['lib_name'],
    license = lic[0],
    classifiers = ['Development Status :: ' + statuses[int(cfg['status'])],
                   'Intended Audience :: ' + cfg['audience'].title(),
                   'Natural Language :: ' + cfg['language'].title(),
                   'License :: ' + lic[1]] + ['Programming Language :: Python :: '+o for o in py_versions[py_versions.index(min_python):]],
    url = cfg['git_url'],
    packages = setuptools.find_packages(include=['diffuse_nb', 'diffuse_nb.*']),
    include_package_data = True,
    package_data = {'diffuse_nb': ['assets/*', 'assets/**/*']},
    install_requires = requirements,
    extras_require = {'dev': dev_requirements},
    python_requires = '>=' + min_python,
    long_description = open('README.md', encoding='utf-8').read(),
    long_description_content_type = 'text/markdown',
    zip_safe = False,
    entry_points = {'console_scripts': console_scripts, 'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
    version = cfg['version'],
    description = cfg['description'],
    author = cfg['author'],
    author_email = cfg['author_email'],
    keywords = cfg['keywords'],
)
