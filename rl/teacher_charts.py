"""Chart specs written by hand for the training topics of the starter set, used by `rl/warmstart.py`'s teacher.

`CHARTS` maps each training topic of `rl/data/build_starter_set.py` (DATA_TOPICS[:-8], PLACE_TOPICS[:-8],
CREATIVE_TOPICS[:-7], and the full prompt of each MIXED row) to three different charts. Data topics that are
formulas plot the formula; the other data topics use realistic rounded values. Place facts are real, rounded public
figures. Creative charts are part of the fiction: their numbers are invented, and the text says so implicitly by
being a story. None of the held-out topics appear here, so the held-out set stays unseen.

Each chart's code runs in the code sandbox, where `np`, `pd`, `plt` and `sns` are already imported; its strings use
double quotes, because the tag wraps the code in single quotes.
"""

from __future__ import annotations

from typing import NamedTuple


class Chart(NamedTuple):
    """One chart of a teacher draft: the sentence before the tag, the tag's description and its code."""

    intro: str
    description: str
    code: str


CHARTS: dict[str, tuple[Chart, Chart, Chart]] = {
    # --- data topics: formulas plotted, other values realistic and rounded --------------------------------------
    "the monthly rainfall of Seattle and Phoenix over a year": (
        Chart(
            "Seattle gets about 1,000 mm of rain a year, more than five times Phoenix.",
            "Yearly rainfall of Seattle and Phoenix",
            'plt.bar(["Seattle", "Phoenix"], [1000, 180])',
        ),
        Chart(
            "Seattle's rain falls mostly from October to March; its summers are dry.",
            "Seattle rainfall by month in mm",
            "plt.plot(range(1, 13), [142, 96, 106, 81, 48, 38, 15, 23, 38, 94, 152, 145])",
        ),
        Chart(
            "Phoenix stays dry all year, with small peaks in winter and in the July-August monsoon.",
            "Phoenix rainfall by month in mm",
            "plt.bar(range(1, 13), [23, 23, 23, 7, 3, 1, 26, 25, 16, 15, 15, 23])",
        ),
    ),
    "how compound interest grows at 3%, 5% and 7% over 30 years": (
        Chart(
            "The gap between the rates widens every year, because interest earns interest.",
            "Growth of 1 dollar at 3, 5, 7%",
            "x = np.arange(31)\nplt.plot(x, 1.03**x, x, 1.05**x, x, 1.07**x)",
        ),
        Chart(
            "At 7%, $1,000 grows to about $7,600 in 30 years, three times the 3% result.",
            "1,000 dollars after 30 years",
            'plt.bar(["3%", "5%", "7%"], [1000 * 1.03**30, 1000 * 1.05**30, 1000 * 1.07**30])',
        ),
        Chart(
            "At 7%, the interest earned in year 30 is about seven times that of year one.",
            "Yearly interest on 1,000 at 7%",
            "x = np.arange(1, 31)\nplt.bar(x, 70 * 1.07 ** (x - 1))",
        ),
    ),
    "the population of the five largest cities in Brazil": (
        Chart(
            "São Paulo, with about 11.5 million people, is almost twice as large as Rio.",
            "Population of the largest cities, millions",
            'plt.barh(["São Paulo", "Rio", "Brasília", "Fortaleza", "Salvador"], [11.5, 6.2, 2.8, 2.4, 2.4])',
        ),
        Chart(
            "São Paulo alone holds over 45% of the people in these five cities.",
            "Share of the five cities combined",
            'plt.pie([11.5, 6.2, 2.8, 2.4, 2.4], labels=["SP", "Rio", "BSB", "FOR", "SSA"])',
        ),
        Chart(
            "São Paulo grew fivefold between 1950 and 2022, but its growth has slowed since 2000.",
            "São Paulo population since 1950, millions",
            "plt.plot([1950, 1970, 1991, 2010, 2022], [2.2, 5.9, 9.6, 11.3, 11.5])",
        ),
    ),
    "the share of renewable energy in Germany from 2000 to 2020": (
        Chart(
            "Renewables rose from about 6% of German electricity in 2000 to about 45% in 2020.",
            "Renewable share of German electricity, %",
            "plt.plot([2000, 2005, 2010, 2015, 2020], [6, 10, 17, 32, 45])",
        ),
        Chart(
            "Wind power made more than half of Germany's renewable electricity in 2020.",
            "German renewable power by source, TWh",
            'plt.bar(["Wind", "Solar", "Biomass", "Hydro"], [132, 50, 45, 18])',
        ),
        Chart(
            "Heating and transport lag far behind: renewables covered only 15% and 7% of them in 2020.",
            "Renewable share by sector, 2020",
            'plt.bar(["Electricity", "Heat", "Transport"], [45, 15, 7])',
        ),
    ),
    "the shape of y = x^3 - 3x between -2 and 2": (
        Chart(
            "The curve peaks at 2 when x = -1 and dips to -2 when x = 1.",
            "The cubic y = x^3 - 3x",
            "x = np.linspace(-2, 2)\nplt.plot(x, x**3 - 3 * x)",
        ),
        Chart(
            "Its slope, 3x^2 - 3, is zero at x = -1 and x = 1, where the curve turns.",
            "Slope of the cubic, 3x^2 - 3",
            "x = np.linspace(-2, 2)\nplt.plot(x, 3 * x**2 - 3)",
        ),
        Chart(
            "Subtracting 3x bends the plain cubic into a wave with roots near -1.73, 0 and 1.73.",
            "Plain cubic against the shifted one",
            "x = np.linspace(-2, 2)\nplt.plot(x, x**3, x, x**3 - 3 * x)",
        ),
    ),
    "average daily temperatures in Oslo across the seasons": (
        Chart(
            "Oslo's daily average runs from about -3 °C in winter to 17 °C in July.",
            "Oslo average temperature by month, °C",
            "plt.plot(range(1, 13), [-3, -3, 0, 5, 11, 15, 17, 16, 11, 6, 1, -2])",
        ),
        Chart(
            "Summer averages about 16 °C, while winter stays below freezing.",
            "Oslo average temperature by season",
            'plt.bar(["Winter", "Spring", "Summer", "Autumn"], [-3, 5, 16, 6])',
        ),
        Chart(
            "The seasons follow the light: Oslo has about 6 hours of daylight at midwinter and 19 at midsummer.",
            "Oslo daylight hours through the year",
            'plt.bar(["Dec 21", "Mar 20", "Jun 21", "Sep 22"], [6, 12, 19, 12])',
        ),
    ),
    "the growth of a bacteria culture that doubles every hour": (
        Chart(
            "After 10 hours of doubling, a single cell has become 1,024 cells.",
            "Cells from one, doubling hourly",
            "t = np.arange(11)\nplt.plot(t, 2**t)",
        ),
        Chart(
            "On a logarithmic scale, doubling every hour becomes a straight line.",
            "Culture size on a log scale",
            "t = np.linspace(0, 10)\nplt.semilogy(t, 2**t)",
        ),
        Chart(
            "Starting from 100 cells, the culture passes 6,000 after six hours.",
            "Cells per hour from 100",
            "plt.bar(range(7), 100 * 2 ** np.arange(7))",
        ),
    ),
    "smartphone sales of four brands last year": (
        Chart(
            "Apple and Samsung shipped about 230 million phones each, well ahead of Xiaomi.",
            "Phones shipped per brand, millions",
            'plt.bar(["Apple", "Samsung", "Xiaomi", "Transsion"], [230, 225, 170, 105])',
        ),
        Chart(
            "The four brands together shipped nearly 60% of the world's 1.2 billion phones.",
            "Share of global phone shipments",
            'plt.pie([230, 225, 170, 105, 510], labels=["Apple", "Samsung", "Xiaomi", "Transsion", "Others"])',
        ),
        Chart(
            "Apple ships the most phones in the fourth quarter, when new iPhones meet holiday shopping.",
            "Apple shipments per quarter, millions",
            'plt.plot(["Q1", "Q2", "Q3", "Q4"], [50, 45, 55, 77])',
        ),
    ),
    "the normal distribution and how its width depends on sigma": (
        Chart(
            "Doubling sigma halves the peak height and doubles the spread of the bell.",
            "Normal curves with sigma 0.5, 1, 2",
            "x = np.linspace(-5, 5)\nfor s in (0.5, 1, 2): plt.plot(x, np.exp(-((x / s) ** 2) / 2) / (s * 2.507))",
        ),
        Chart(
            "About 68% of values fall within one sigma of the mean, and 95% within two.",
            "Share within 1, 2, 3 sigma",
            'plt.bar(["±1σ", "±2σ", "±3σ"], [68.3, 95.4, 99.7])',
        ),
        Chart(
            "Random draws with sigma 2 spread twice as wide as draws with sigma 1.",
            "Samples with sigma 1 and 2",
            "r = np.random.default_rng(0)\nplt.hist([r.normal(0, 1, 1000), r.normal(0, 2, 1000)], bins=30)",
        ),
    ),
    "a marathon runner's pace over each 5 km split": (
        Chart(
            "The pace holds near 5:00 per km until 30 km, then slows as fatigue sets in.",
            "Pace per 5 km split, min/km",
            "plt.plot([5, 10, 15, 20, 25, 30, 35, 40], [4.9, 4.9, 5.0, 5.0, 5.0, 5.1, 5.3, 5.5])",
        ),
        Chart(
            "The last 5 km split took three minutes longer than the first.",
            "Minutes for each 5 km split",
            "plt.bar(range(5, 45, 5), [24.5, 24.5, 25, 25, 25, 25.5, 26.5, 27.5], width=3)",
        ),
        Chart(
            "Ahead of an even 5:00 pace early on, the runner falls behind it from 35 km.",
            "Elapsed time against an even pace",
            "x = np.arange(5, 45, 5)\nplt.plot(x, np.cumsum([24.5, 24.5, 25, 25, 25, 25.5, 26.5, 27.5]), x, 5 * x)",
        ),
    ),
    "the half-life decay of carbon-14": (
        Chart(
            "After 5,730 years, half of the carbon-14 in a sample remains.",
            "Carbon-14 left over 30,000 years",
            "t = np.linspace(0, 30000)\nplt.plot(t, 100 * 0.5 ** (t / 5730))",
        ),
        Chart(
            "Each 5,730 years halves what is left: a quarter remains after 11,460 years.",
            "Carbon-14 left after each half-life",
            'plt.bar(["0", "5730", "11460", "17190"], [100, 50, 25, 12.5])',
        ),
        Chart(
            "A sample with 10% of its carbon-14 left is about 19,000 years old.",
            "Age from the share remaining",
            "f = np.linspace(0.05, 1)\nplt.plot(f, -5730 * np.log2(f))",
        ),
    ),
    "coffee consumption per person in ten countries": (
        Chart(
            "Finland leads the world at about 12 kg of coffee per person each year.",
            "Coffee per person per year, kg",
            'plt.barh(["FI", "NO", "IS", "DK", "NL", "SE", "CH", "DE", "BR", "US"], [12, 10, 9, 9, 8, 8, 8, 6, 6, 4])',
        ),
        Chart(
            "A Finn drinks over three cups a day, nearly three times as many as an American.",
            "Cups of coffee per person daily",
            'plt.bar(["Finland", "Germany", "Brazil", "USA"], [3.3, 1.6, 1.6, 1.2])',
        ),
        Chart(
            "The Nordic countries drink far more coffee per person than any other region.",
            "Coffee per person by region, kg",
            'plt.bar(["Nordics", "W. Europe", "Americas", "Asia"], [10, 6, 4, 1])',
        ),
    ),
    "the relation between study hours and exam scores for a class": (
        Chart(
            "Each extra hour of study lines up with about four more points.",
            "Exam score against study hours",
            "plt.scatter([1, 2, 3, 4, 5, 6, 7, 8], [52, 58, 61, 67, 70, 74, 79, 83])",
        ),
        Chart(
            "Students who studied 6-8 hours averaged 80, against 55 for those who studied 0-2.",
            "Average score by study time",
            'plt.bar(["0-2 h", "3-5 h", "6-8 h"], [55, 68, 80])',
        ),
        Chart(
            "Gains shrink with time: the first hours help most, then scores level off.",
            "Saturating model of score gains",
            "h = np.linspace(0, 12)\nplt.plot(h, 100 - 50 * np.exp(-h / 5))",
        ),
    ),
    "quarterly revenue of a small bakery": (
        Chart(
            "Revenue peaks in the fourth quarter, when holiday cakes and cookies sell best.",
            "Revenue per quarter, thousand dollars",
            'plt.bar(["Q1", "Q2", "Q3", "Q4"], [48, 55, 52, 70])',
        ),
        Chart(
            "Every quarter beat the same quarter of last year by 6 to 10%.",
            "This year against last year",
            "q = np.arange(1, 5)\nplt.plot(q, [44, 50, 49, 64], q, [48, 55, 52, 70])",
        ),
        Chart(
            "Bread brings in 40% of the revenue, and cakes another 30%.",
            "Revenue share by product",
            'plt.pie([40, 30, 20, 10], labels=["Bread", "Cakes", "Pastries", "Coffee"])',
        ),
    ),
    "the sine and cosine functions over one period": (
        Chart(
            "Cosine is sine shifted left by a quarter period, π/2.",
            "Sine and cosine from 0 to 2π",
            "x = np.linspace(0, 2 * np.pi)\nplt.plot(x, np.sin(x), x, np.cos(x))",
        ),
        Chart(
            "The squares of sine and cosine always add up to exactly 1.",
            "sin² and cos² over one period",
            "x = np.linspace(0, 2 * np.pi)\nplt.plot(x, np.sin(x) ** 2, x, np.cos(x) ** 2)",
        ),
        Chart(
            "Cosine and sine are the x and y of a point moving around the unit circle.",
            "The unit circle traced by both",
            "t = np.linspace(0, 2 * np.pi)\nplt.plot(np.cos(t), np.sin(t))",
        ),
    ),
    "how a car's stopping distance rises with speed": (
        Chart(
            "At 100 km/h a car needs about 100 m to stop, nearly four times its distance at 40.",
            "Stopping distance against speed, km/h",
            "v = np.linspace(0, 130)\nplt.plot(v, v / 3.6 * 1.5 + (v / 3.6) ** 2 / 14)",
        ),
        Chart(
            "The UK Highway Code gives 96 m to stop at 70 mph, eight times the 12 m at 20 mph.",
            "Highway Code stopping distances by mph",
            'plt.bar(["20", "30", "40", "50", "60", "70"], [12, 23, 36, 53, 73, 96])',
        ),
        Chart(
            "Reaction distance grows in step with speed, but braking distance grows with its square.",
            "Reaction and braking distance",
            "v = np.linspace(0, 130)\nplt.plot(v, v / 3.6 * 1.5, v, (v / 3.6) ** 2 / 14)",
        ),
    ),
    "the age distribution of a town's population": (
        Chart(
            "The largest group is aged 45-59, a sign of an ageing town.",
            "Residents by age group, %",
            'plt.bar(["0-14", "15-29", "30-44", "45-59", "60-74", "75+"], [16, 17, 19, 21, 18, 9])',
        ),
        Chart(
            "One resident in five is a child, and one in five is 65 or older.",
            "Children, working age and retirees",
            'plt.pie([20, 60, 20], labels=["Children", "Working age", "65+"])',
        ),
        Chart(
            "The town's median age rose by 11 years in four decades.",
            "Median age since 1980",
            "plt.plot([1980, 1990, 2000, 2010, 2020], [33, 35, 38, 41, 44])",
        ),
    ),
    "electricity use of a household hour by hour": (
        Chart(
            "Use peaks around 6 pm, when cooking, lighting and TV overlap.",
            "Household power use by hour, kWh",
            "plt.plot(range(0, 24, 2), [0.3, 0.3, 0.3, 0.9, 0.6, 0.4, 0.5, 0.4, 0.8, 1.8, 1.3, 0.6])",
        ),
        Chart(
            "Almost half of the day's 11 kWh is used in the evening.",
            "Energy used per part of day",
            'plt.bar(["Night", "Morning", "Afternoon", "Evening"], [1.5, 2.5, 2.0, 5.0])',
        ),
        Chart(
            "At weekends the morning peak fades and use spreads across the day.",
            "Weekday and weekend use by hour",
            "h = np.arange(0, 24, 4)\nplt.plot(h, [0.3, 0.3, 0.9, 0.4, 0.8, 1.6], h, [0.3, 0.3, 0.5, 0.9, 0.9, 1.4])",
        ),
    ),
    "the orbital periods of the eight planets": (
        Chart(
            "Periods range from 0.24 years for Mercury to 165 years for Neptune.",
            "Orbital period in Earth years",
            'plt.bar(["Me", "V", "E", "Ma", "J", "S", "U", "N"], [0.24, 0.62, 1, 1.88, 11.9, 29.5, 84, 165], log=True)',
        ),
        Chart(
            "On log axes, period against distance is a straight line: Kepler's third law.",
            "Period against distance, log axes",
            'plt.loglog([0.39, 0.72, 1, 1.52, 5.2, 9.58, 19.2, 30.1], [0.24, 0.62, 1, 1.88, 11.9, 29.5, 84, 165], "o")',
        ),
        Chart(
            "Mercury circles the Sun in 88 days; Mars needs 687.",
            "Inner planet orbits in days",
            'plt.bar(["Mercury", "Venus", "Earth", "Mars"], [88, 225, 365, 687])',
        ),
    ),
    "the price of a loaf of bread over fifty years": (
        Chart(
            "A pound of US white bread cost about 36 cents in 1975 and about $2 in 2025.",
            "US white bread price per pound",
            "plt.plot([1975, 1985, 1995, 2005, 2015, 2025], [0.36, 0.55, 0.84, 1.05, 1.42, 2.0])",
        ),
        Chart(
            "Adjusted for inflation, the loaf costs about the same as in 1975.",
            "Bread price in 2025 dollars",
            'plt.bar(["1975", "1995", "2025"], [2.1, 1.8, 2.0])',
        ),
        Chart(
            "A steady 3.5% rise a year is enough to multiply the price by more than five.",
            "Price growing 3.5% a year",
            "y = np.arange(1975, 2026)\nplt.plot(y, 0.36 * 1.035 ** (y - 1975))",
        ),
    ),
    "how CO2 concentration changed since 1960": (
        Chart(
            "CO2 at Mauna Loa rose from about 317 ppm in 1960 to 414 ppm in 2020.",
            "CO2 at Mauna Loa, ppm",
            "plt.plot([1960, 1970, 1980, 1990, 2000, 2010, 2020], [317, 326, 339, 354, 369, 390, 414])",
        ),
        Chart(
            "The yearly rise has nearly tripled, from under 1 ppm in the 1960s to 2.4 in the 2010s.",
            "Average yearly CO2 rise per decade",
            'plt.bar(["1960s", "1970s", "1980s", "1990s", "2000s", "2010s"], [0.9, 1.3, 1.6, 1.5, 2.0, 2.4])',
        ),
        Chart(
            "Each year the curve wiggles by about 6 ppm as northern forests grow and shed leaves.",
            "Seasonal CO2 cycle on the trend",
            "t = np.linspace(2015, 2020, 200)\nplt.plot(t, 400 + 2.3 * (t - 2015) + 3 * np.sin(2 * np.pi * t))",
        ),
    ),
    "the heights of students in a class as a histogram": (
        Chart(
            "Most of the 30 students are between 157 and 173 cm tall.",
            "Student heights in cm",
            "plt.hist(np.random.default_rng(1).normal(165, 8, 30), bins=8)",
        ),
        Chart(
            "Boys average about 11 cm taller than girls, but the two groups overlap.",
            "Heights of boys and girls",
            "r = np.random.default_rng(2)\nplt.hist([r.normal(171, 7, 15), r.normal(160, 6, 15)], bins=6)",
        ),
        Chart(
            "Twelve of the 30 students measure in the 160s, the tallest bar.",
            "Students per 10 cm band",
            'plt.bar(["150s", "160s", "170s", "180s"], [6, 12, 9, 3])',
        ),
    ),
    "the logistic growth of a rabbit population": (
        Chart(
            "Starting from 10 rabbits, the population levels off near its carrying capacity of 500.",
            "Rabbits over 20 months",
            "t = np.linspace(0, 20)\nplt.plot(t, 500 / (1 + 49 * np.exp(-0.5 * t)))",
        ),
        Chart(
            "Growth is fastest at 250 rabbits, half the carrying capacity.",
            "Growth rate against population",
            "p = np.linspace(0, 500)\nplt.plot(p, 0.5 * p * (1 - p / 500))",
        ),
        Chart(
            "Early on the two models agree, but limited food stops the logistic curve from exploding.",
            "Exponential against logistic growth",
            "t = np.linspace(0, 12)\nplt.plot(t, 10 * np.exp(0.5 * t), t, 500 / (1 + 49 * np.exp(-0.5 * t)))",
        ),
    ),
    "the exchange rate of two currencies over a month": (
        Chart(
            "The euro swung within about two cents against the dollar over the month.",
            "Dollars per euro, weekly",
            'plt.plot(["Wk 1", "Wk 2", "Wk 3", "Wk 4"], [1.085, 1.092, 1.078, 1.097])',
        ),
        Chart(
            "Day-to-day moves are small, usually a few tenths of a cent.",
            "Daily rate over 30 days",
            "r = np.random.default_rng(3)\nplt.plot(np.arange(1, 31), 1.09 + np.cumsum(r.normal(0, 0.003, 30)))",
        ),
        Chart(
            "Seen from the other side, a dollar bought between 0.91 and 0.93 euros.",
            "Euros per dollar, weekly",
            'plt.plot(["Wk 1", "Wk 2", "Wk 3", "Wk 4"], [0.922, 0.916, 0.928, 0.912])',
        ),
    ),
    "how a pendulum's period depends on its length": (
        Chart(
            "A pendulum 1 m long swings with a period of about 2 seconds.",
            "Period against length, seconds",
            "L = np.linspace(0.1, 2)\nplt.plot(L, 2 * np.pi * np.sqrt(L / 9.81))",
        ),
        Chart(
            "The period squared grows in a straight line with length, with slope 4π²/g.",
            "Period squared against length",
            "L = np.linspace(0.1, 2)\nplt.plot(L, 4 * np.pi**2 * L / 9.81)",
        ),
        Chart(
            "Making a pendulum four times longer only doubles its period.",
            "Periods of three pendulums",
            'plt.bar(["0.25 m", "1 m", "4 m"], [1.0, 2.0, 4.0])',
        ),
    ),
    "the vote shares of four parties in an election": (
        Chart(
            "No party won a majority: the Blue party led with 34%.",
            "Vote share per party, %",
            'plt.bar(["Blue", "Red", "Green", "Yellow"], [34, 29, 21, 16])',
        ),
        Chart(
            "Red and Green together hold exactly half of the vote.",
            "Split of the vote",
            'plt.pie([34, 29, 21, 16], labels=["Blue", "Red", "Green", "Yellow"])',
        ),
        Chart(
            "Green gained 6 points, the only party to grow since the last election.",
            "Change since last election, points",
            'plt.bar(["Blue", "Red", "Green", "Yellow"], [-3, -2, 6, -1])',
        ),
    ),
    "a company's monthly active users over two years": (
        Chart(
            "Growing 8% a month, users rose from 54,000 to about 320,000 in two years.",
            "Monthly active users, thousands",
            "m = np.arange(1, 25)\nplt.plot(m, 50 * 1.08**m)",
        ),
        Chart(
            "Users more than doubled in each of the two years.",
            "Users at the start and each year end",
            'plt.bar(["Start", "Year 1", "Year 2"], [54, 126, 317])',
        ),
        Chart(
            "Each month adds more users than the last, about 25,000 in month 24.",
            "New users per month, thousands",
            "m = np.arange(1, 25)\nplt.bar(m, 4 * 1.08**m)",
        ),
    ),
    "the boiling point of water at different altitudes": (
        Chart(
            "Water boils about 1 °C lower for every 300 m of height.",
            "Boiling point against altitude, °C",
            "h = np.linspace(0, 9000)\nplt.plot(h, 100 - h / 300)",
        ),
        Chart(
            "On top of Everest, water boils at about 70 °C, too cool to cook pasta well.",
            "Boiling point in four places",
            'plt.bar(["Sea level", "Denver", "La Paz", "Everest"], [100, 95, 88, 70])',
        ),
        Chart(
            "Air pressure falls by a third by 3,500 m, which lowers the boiling point.",
            "Air pressure against altitude, kPa",
            "h = np.linspace(0, 9000)\nplt.plot(h, 101 * np.exp(-h / 8400))",
        ),
    ),
    # --- place topics: real, rounded public figures -------------------------------------------------------------
    "the temples of Kyoto": (
        Chart(
            "Kyoto's famous temples span seven centuries, from Kiyomizu-dera in 778 to Ginkaku-ji in 1482.",
            "Founding years of four temples",
            'plt.barh(["Kiyomizu-dera", "To-ji", "Kinkaku-ji", "Ginkaku-ji"], [778, 796, 1397, 1482])',
        ),
        Chart(
            "Of the 17 UNESCO-listed sites of ancient Kyoto, 13 are Buddhist temples.",
            "UNESCO sites of Kyoto by kind",
            'plt.pie([13, 3, 1], labels=["Temples", "Shrines", "Castle"])',
        ),
        Chart(
            "Tō-ji's five-storey pagoda, about 55 m tall, is the tallest wooden pagoda in Japan.",
            "Heights of Kyoto landmarks in m",
            'plt.bar(["To-ji pagoda", "Kiyomizu stage", "Kinkaku-ji"], [55, 13, 12.5])',
        ),
    ),
    "the Sydney Opera House": (
        Chart(
            "Estimated at A$7 million, the Opera House finally cost A$102 million.",
            "Estimated and final cost, A$ million",
            'plt.bar(["Estimate", "Final cost"], [7, 102])',
        ),
        Chart(
            "Building was planned to take four years but took fourteen, from 1959 to 1973.",
            "Planned and actual years of building",
            'plt.bar(["Planned", "Actual"], [4, 14])',
        ),
        Chart(
            "The Concert Hall seats 2,679 people, the largest of the house's venues.",
            "Seats in three venues",
            'plt.barh(["Concert Hall", "Joan Sutherland", "Drama Theatre"], [2679, 1507, 544])',
        ),
    ),
    "the giant panda": (
        Chart(
            "Wild pandas fell to about 1,100 in the 1980s and recovered to 1,864 by 2014.",
            "Wild giant pandas in national surveys",
            'plt.plot(["1970s", "1980s", "2000s", "2014"], [2459, 1114, 1596, 1864])',
        ),
        Chart(
            "A giant panda spends up to 14 hours a day eating bamboo.",
            "Hours of a panda day",
            'plt.pie([14, 10], labels=["Eating", "Resting and other"])',
        ),
        Chart(
            "A newborn cub weighs about 100 g, roughly a thousandth of its mother.",
            "Mother and newborn cub, kg",
            'plt.bar(["Mother", "Newborn cub"], [100, 0.1], log=True)',
        ),
    ),
    "the Golden Gate Bridge": (
        Chart(
            "Its 1,280 m main span was the world's longest from 1937 until 1964.",
            "Main spans of suspension bridges, m",
            'plt.bar(["Golden Gate", "Verrazzano", "Humber", "Akashi Kaikyo"], [1280, 1298, 1410, 1991])',
        ),
        Chart(
            "Its towers rise 227 m above the water, and ships pass 67 m below the deck.",
            "Tower height and clearance, m",
            'plt.barh(["Towers", "Deck clearance"], [227, 67])',
        ),
        Chart(
            "The main span makes up almost half of the bridge's 2,737 m length.",
            "Parts of the total bridge length",
            'plt.pie([1280, 686, 771], labels=["Main span", "Side spans", "Approaches"])',
        ),
    ),
    "Machu Picchu": (
        Chart(
            "At 2,430 m, Machu Picchu sits almost 1,000 m lower than Cusco.",
            "Elevations in the Sacred Valley, m",
            'plt.bar(["Machu Picchu", "Ollantaytambo", "Cusco"], [2430, 2790, 3400])',
        ),
        Chart(
            "The Incas used the site for about a century; the outside world learned of it in 1911.",
            "Timeline from 1450 to today",
            'plt.barh(["Inca city", "Forgotten", "World fame"], [122, 339, 114], left=[1450, 1572, 1911])',
        ),
        Chart(
            "The citadel perches about 450 m above the Urubamba River, with Huayna Picchu 290 m higher.",
            "River, citadel and peak, m",
            'plt.bar(["Urubamba River", "Citadel", "Huayna Picchu"], [1980, 2430, 2720])',
        ),
    ),
    "the northern lights over Iceland": (
        Chart(
            "The aurora season runs from September to March, when Reykjavík's days are short.",
            "Reykjavík daylight hours by month",
            'plt.bar(["Sep", "Oct", "Nov", "Dec", "Jan", "Feb", "Mar"], [13, 10, 6, 4, 5, 8, 12])',
        ),
        Chart(
            "Green, the most common colour, glows around 100-250 km up; red glows higher.",
            "Typical glow height by colour, km",
            'plt.bar(["Blue-violet", "Green", "Red"], [90, 150, 300])',
        ),
        Chart(
            "Auroras are most frequent near solar maximum; the latest came around 2024.",
            "Smoothed sunspot number, 2008-2024",
            "plt.plot([2008, 2014, 2019, 2024], [2, 116, 2, 160])",
        ),
    ),
    "the Colosseum in Rome": (
        Chart(
            "The oval measures 189 by 156 m, and its outer wall rises 48 m.",
            "Colosseum dimensions in m",
            'plt.bar(["Length", "Width", "Height"], [189, 156, 48])',
        ),
        Chart(
            "Built in about ten years, the arena hosted games for over four centuries.",
            "Building and games, 70-523 AD",
            'plt.barh(["Construction", "Games held"], [10, 443], left=[70, 80])',
        ),
        Chart(
            "The Colosseum held about 50,000 people; the Circus Maximus held about three times more.",
            "Spectator capacity compared",
            'plt.bar(["Colosseum", "Wembley", "Circus Maximus"], [50000, 90000, 150000])',
        ),
    ),
    "the Great Barrier Reef": (
        Chart(
            "At about 344,000 km², the reef covers more than Italy and almost as much as Germany.",
            "Area in thousand km²",
            'plt.bar(["Reef", "Germany", "Italy", "UK"], [344, 357, 302, 243])',
        ),
        Chart(
            "The reef is home to over 1,600 fish species and more than 600 kinds of coral.",
            "Species living on the reef",
            'plt.bar(["Fish", "Corals", "Sharks, rays", "Whales, dolphins"], [1625, 600, 133, 30])',
        ),
        Chart(
            "Mass bleaching, once rare, struck the reef three times between 2020 and 2024.",
            "Mass bleaching events per decade",
            'plt.bar(["1990s", "2000s", "2010s", "2020-24"], [1, 1, 2, 3])',
        ),
    ),
    "Mount Kilimanjaro": (
        Chart(
            "At 5,895 m, Kilimanjaro is Africa's highest peak, about two-thirds the height of Everest.",
            "Heights of famous peaks, m",
            'plt.bar(["Kilimanjaro", "Mt Kenya", "Mont Blanc", "Everest"], [5895, 5199, 4806, 8849])',
        ),
        Chart(
            "Climbers pass through five climate zones, from farmland to an arctic summit.",
            "Upper limit of each zone, m",
            'plt.bar(["Farms", "Rainforest", "Moorland", "Desert", "Arctic"], [1800, 2800, 4000, 5000, 5895])',
        ),
        Chart(
            "The summit's ice shrank by about 85% between 1912 and 2011.",
            "Summit ice area in km²",
            "plt.plot([1912, 1953, 1976, 1989, 2000, 2011], [12.1, 6.7, 4.2, 3.3, 2.6, 1.8])",
        ),
    ),
    "the Taj Mahal": (
        Chart(
            "The main dome's tip stands about 73 m high, far above the four 40 m minarets.",
            "Dome and minaret heights, m",
            'plt.bar(["Main dome", "Minarets"], [73, 40])',
        ),
        Chart(
            "The tomb was finished around 1643, but the whole complex took until 1653.",
            "Building the Taj Mahal, 1632-1653",
            'plt.barh(["Mausoleum", "Whole complex"], [11, 21], left=[1632, 1632])',
        ),
        Chart(
            "About 20,000 artisans and 1,000 elephants are said to have worked on it.",
            "Workers and elephants on the site",
            'plt.bar(["Workers", "Elephants"], [20000, 1000])',
        ),
    ),
    "the red-eyed tree frog": (
        Chart(
            "Females grow to about 7.5 cm, half as long again as the males.",
            "Body length of males and females, cm",
            'plt.bar(["Male", "Female"], [5, 7.5])',
        ),
        Chart(
            "Eggs hatch on the leaf in about a week; tadpoles then drop into the pond below.",
            "Days as egg and as tadpole",
            'plt.barh(["Egg on leaf", "Tadpole in water"], [7, 60])',
        ),
        Chart(
            "The frog sleeps through the day on the underside of leaves and hunts at night.",
            "Hours of a tree frog day",
            'plt.pie([12, 12], labels=["Hunting at night", "Asleep by day"])',
        ),
    ),
    "the Eiffel Tower": (
        Chart(
            "Visitors can go up to 276 m; the antenna tip reaches 330 m.",
            "Heights of the tower levels, m",
            'plt.bar(["1st floor", "2nd floor", "Top floor", "Tip"], [57, 115, 276, 330])',
        ),
        Chart(
            "At 300 m in 1889, it nearly doubled the record of the 169 m Washington Monument.",
            "Tallest structures around 1889-1930, m",
            'plt.bar(["Washington Monument", "Eiffel Tower", "Chrysler Building"], [169, 300, 319])',
        ),
        Chart(
            "The iron frame weighs about 7,300 tonnes, out of 10,100 tonnes in all.",
            "Iron frame and total weight, t",
            'plt.bar(["Iron frame", "Total"], [7300, 10100])',
        ),
    ),
    "Santorini's white villages": (
        Chart(
            "The white villages cling to caldera cliffs about 300 m high; the summit reaches 567 m.",
            "Caldera cliffs and highest point, m",
            'plt.bar(["Caldera cliffs", "Profitis Ilias"], [300, 567])',
        ),
        Chart(
            "The flooded caldera, left by an eruption around 1600 BC, measures about 12 by 7 km.",
            "Size of the caldera in km",
            'plt.bar(["Length", "Width"], [12, 7])',
        ),
        Chart(
            "Summers are hot and dry, with July highs near 28 °C; winters stay mild.",
            "Average daily high in Fira, °C",
            'plt.plot(["Jan", "Apr", "Jul", "Oct"], [14, 19, 28, 23])',
        ),
    ),
    "the Grand Canyon": (
        Chart(
            "The canyon runs 446 km, is up to 29 km wide and about 1.8 km deep.",
            "Length, width and depth in km",
            'plt.bar(["Length", "Max width", "Depth"], [446, 29, 1.8])',
        ),
        Chart(
            "The North Rim stands about 340 m above the South Rim, and the river lies far below.",
            "Rims and canyon floor, m",
            'plt.bar(["North Rim", "South Rim", "Phantom Ranch"], [2440, 2100, 750])',
        ),
        Chart(
            "Rocks at the rim are about 270 million years old; at the bottom, about 1.75 billion.",
            "Age of top and bottom rocks, Myr",
            'plt.barh(["Kaibab Limestone", "Vishnu Schist"], [270, 1750])',
        ),
    ),
    "the James Webb Space Telescope": (
        Chart(
            "Webb's 6.5 m mirror collects over five times as much light as Hubble's.",
            "Mirror collecting area in m²",
            'plt.bar(["Hubble", "Webb"], [4.5, 25.4])',
        ),
        Chart(
            "Webb orbits 1.5 million km from Earth, about four times farther than the Moon.",
            "Distance from Earth in km",
            'plt.bar(["Hubble", "Moon", "Webb (L2)"], [540, 384400, 1500000], log=True)',
        ),
        Chart(
            "Its five-layer sunshield keeps the cold side over 300 °C cooler than the sunny side.",
            "Sunshield temperatures in °C",
            'plt.bar(["Sun side", "Cold side"], [85, -233])',
        ),
    ),
    "the Sagrada Familia": (
        Chart(
            "The central tower of Jesus Christ will reach 172.5 m, above all other towers.",
            "Heights of the basilica towers, m",
            'plt.bar(["Jesus", "Mary", "Evangelists", "Apostles"], [172.5, 138, 135, 100])',
        ),
        Chart(
            "At 172.5 m it overtakes Ulm Minster as the tallest church in the world.",
            "The tallest churches in m",
            'plt.bar(["Sagrada Familia", "Ulm Minster", "Cologne Cathedral"], [172.5, 161.5, 157])',
        ),
        Chart(
            "Gaudí led the work for 43 years; the main towers are due about 144 years after it began.",
            "Construction years and Gaudí at work",
            'plt.barh(["Construction", "Gaudí at work"], [144, 43], left=[1882, 1883])',
        ),
    ),
    "the emperor penguin": (
        Chart(
            "The emperor is the tallest penguin, standing about 1.15 m.",
            "Heights of four penguins, cm",
            'plt.bar(["Emperor", "King", "Adélie", "Little"], [115, 95, 70, 33])',
        ),
        Chart(
            "Emperors can dive below 500 m; the deepest recorded dive is 564 m.",
            "Typical and record dive depth, m",
            'plt.barh(["Typical dive", "Record dive"], [100, 564])',
        ),
        Chart(
            "A male can lose about 40% of his weight fasting through winter to keep the egg warm.",
            "Male weight before and after winter, kg",
            'plt.bar(["Before winter", "After incubation"], [40, 24])',
        ),
    ),
    "Petra in Jordan": (
        Chart(
            "The Monastery's facade, about 47 m high, is even taller than the famous Treasury.",
            "Facade heights in m",
            'plt.bar(["Treasury", "Monastery"], [40, 47])',
        ),
        Chart(
            "The main way in is the Siq, a gorge 1.2 km long with walls up to 80 m high.",
            "The Siq gorge in metres",
            'plt.bar(["Siq length", "Cliff height"], [1200, 80])',
        ),
        Chart(
            "Petra flourished under the Nabataeans until Rome annexed it in 106 AD.",
            "Nabataean and Roman Petra",
            'plt.barh(["Nabataean", "Roman"], [418, 257], left=[-312, 106])',
        ),
    ),
    "the Amazon rainforest": (
        Chart(
            "About 60% of the Amazon rainforest lies in Brazil.",
            "Amazon rainforest by country",
            'plt.pie([60, 13, 10, 17], labels=["Brazil", "Peru", "Colombia", "Others"])',
        ),
        Chart(
            "Yearly forest loss in Brazil's Amazon fell from 27,800 km² in 2004 to 4,600 in 2012.",
            "Yearly deforestation, thousand km²",
            "plt.plot([2004, 2008, 2012, 2016, 2021, 2023], [27.8, 12.9, 4.6, 7.9, 13.0, 9.0])",
        ),
        Chart(
            "The Amazon River carries about five times more water than the Congo, the next largest.",
            "River discharge, thousand m³/s",
            'plt.bar(["Amazon", "Congo", "Orinoco"], [209, 41, 37])',
        ),
    ),
    "the Louvre pyramid": (
        Chart(
            "The glass pyramid is 21.6 m high on a square base 35.4 m wide.",
            "Pyramid height and base, m",
            'plt.bar(["Height", "Base side"], [21.6, 35.4])',
        ),
        Chart(
            "The Great Pyramid of Giza is almost seven times as tall as the Louvre's.",
            "Louvre and Giza pyramids, m",
            'plt.bar(["Louvre", "Giza"], [21.6, 146.6])',
        ),
        Chart(
            "The Louvre drew a record 10.2 million visitors in 2018, most entering through the pyramid.",
            "Louvre visitors per year, millions",
            "plt.plot([2018, 2019, 2020, 2022, 2023], [10.2, 9.6, 2.7, 7.8, 8.9])",
        ),
    ),
    "the Sahara's dunes": (
        Chart(
            "The Sahara covers about 9.2 million km², almost the size of the United States.",
            "Area in million km²",
            'plt.bar(["Sahara", "USA", "Australia"], [9.2, 9.8, 7.7])',
        ),
        Chart(
            "Only about a quarter of the Sahara is sand sea; most is rock and gravel.",
            "What covers the Sahara",
            'plt.pie([25, 75], labels=["Sand seas", "Rock and gravel"])',
        ),
        Chart(
            "The central Sahara gets under 25 mm of rain a year, a twentieth of London's.",
            "Yearly rainfall in mm",
            'plt.bar(["Central Sahara", "London", "Manaus"], [25, 600, 2300])',
        ),
    ),
    "Angkor Wat": (
        Chart(
            "Angkor Wat covers about 163 hectares, more than three times Vatican City.",
            "Area in hectares",
            'plt.bar(["Angkor Wat", "Vatican City"], [162.6, 49])',
        ),
        Chart(
            "Its central tower rises 65 m, nearly as high as the towers of Notre-Dame de Paris.",
            "Tower heights in m",
            'plt.bar(["Angkor Wat", "Notre-Dame"], [65, 69])',
        ),
        Chart(
            "The wider Angkor Archaeological Park covers about 400 km², nearly four times Paris.",
            "Park and Paris area, km²",
            'plt.bar(["Angkor park", "Paris"], [400, 105])',
        ),
    ),
    "the Statue of Liberty": (
        Chart(
            "The copper statue is 46 m tall; on its pedestal, the torch is 93 m above the ground.",
            "Statue and total height, m",
            'plt.bar(["Statue", "With pedestal"], [46, 93])',
        ),
        Chart(
            "Her right arm alone is 12.8 m long, and her nose about 1.4 m.",
            "Sizes of body parts, m",
            'plt.barh(["Index finger", "Nose", "Head", "Right arm"], [2.4, 1.4, 5.3, 12.8])',
        ),
        Chart(
            "The thin copper skin weighs about 28 tonnes, hung on a 113-tonne steel frame.",
            "Weight of the parts, tonnes",
            'plt.bar(["Copper skin", "Steel frame", "Total"], [28, 113, 204])',
        ),
    ),
    "the monarch butterfly": (
        Chart(
            "Wintering monarchs in Mexico covered 18 hectares in 1996 but under 1 in 2023.",
            "Wintering colony area, hectares",
            "plt.plot([1996, 2003, 2013, 2018, 2023], [18.2, 11.1, 0.7, 6.1, 0.9])",
        ),
        Chart(
            "The migrating generation lives about eight months, eight times as long as summer adults.",
            "Adult lifespan in weeks",
            'plt.bar(["Summer adult", "Migrating adult"], [4, 32])',
        ),
        Chart(
            "From egg to butterfly takes about four weeks.",
            "Days in each life stage",
            'plt.bar(["Egg", "Caterpillar", "Chrysalis"], [4, 12, 10])',
        ),
    ),
    "Neuschwanstein Castle": (
        Chart(
            "Of the more than 200 rooms planned, only about 15 were finished.",
            "Rooms planned and finished",
            'plt.bar(["Planned", "Finished"], [200, 15])',
        ),
        Chart(
            "After 17 years of building, King Ludwig II lived in his castle for only 172 days.",
            "Days of building and of living there",
            'plt.bar(["Construction", "Ludwig in residence"], [6200, 172])',
        ),
        Chart(
            "Ludwig II built three palaces at once; only Linderhof was finished in his lifetime.",
            "Three palaces of Ludwig II",
            'plt.barh(["Neuschwanstein", "Linderhof", "Herrenchiemsee"], [17, 16, 8], left=[1869, 1870, 1878])',
        ),
    ),
    "Victoria Falls": (
        Chart(
            "At 108 m, Victoria Falls is about twice as high as Niagara's Horseshoe Falls.",
            "Height of three great falls, m",
            'plt.bar(["Victoria", "Iguazu", "Niagara"], [108, 82, 51])',
        ),
        Chart(
            "The falls form a curtain of water 1,708 m wide and 108 m high.",
            "Width and height in m",
            'plt.bar(["Width", "Height"], [1708, 108])',
        ),
        Chart(
            "The flow swells roughly tenfold from the November low to the April flood.",
            "Flow in dry and wet season, m³/s",
            'plt.bar(["November", "April"], [300, 3000])',
        ),
    ),
    "the Burj Khalifa": (
        Chart(
            "At 828 m, the Burj Khalifa is about 150 m taller than the next building, Merdeka 118.",
            "The tallest buildings in m",
            'plt.bar(["Burj Khalifa", "Merdeka 118", "Shanghai Tower", "One WTC"], [828, 679, 632, 541])',
        ),
        Chart(
            "Its highest public deck, on level 148, sits 555 m up, still 273 m below the tip.",
            "Observation decks and tip, m",
            'plt.bar(["Level 125", "Level 148", "Tip"], [456, 555, 828])',
        ),
        Chart(
            "The Burj Khalifa is about two and a half Eiffel Towers tall.",
            "Three landmarks compared, m",
            'plt.bar(["Burj Khalifa", "Empire State", "Eiffel Tower"], [828, 443, 330])',
        ),
    ),
    "the snow leopard": (
        Chart(
            "Its thick tail, about 95 cm long, is almost as long as its body.",
            "Body and tail length, cm",
            'plt.bar(["Body", "Tail"], [110, 95])',
        ),
        Chart(
            "Snow leopards live mostly between 3,000 and 4,500 m, sometimes up to 5,500 m.",
            "Elevations of its habitat, m",
            'plt.bar(["Usual low", "Usual high", "Highest"], [3000, 4500, 5500])',
        ),
        Chart(
            "About 60% of the snow leopard's range lies in China, one of 12 range countries.",
            "Share of its range by country",
            'plt.pie([60, 40], labels=["China", "11 other countries"])',
        ),
    ),
    # --- creative topics: the numbers belong to the story ----------------------------------------------------------
    "a dragon who runs a bakery": (
        Chart(
            "On Fridays the dragon bakes 210 loaves, nearly twice the Wednesday batch.",
            "Loaves baked per day",
            'plt.bar(["Mon", "Tue", "Wed", "Thu", "Fri"], [120, 135, 110, 150, 210])',
        ),
        Chart(
            "Bread still sells best, but ember tarts now make a quarter of the sales.",
            "What the bakery sells",
            'plt.pie([45, 30, 25], labels=["Bread", "Cinnamon buns", "Ember tarts"])',
        ),
        Chart(
            "Dragon breath heats the oven four times hotter than the village oven.",
            "Oven heat in degrees",
            'plt.bar(["Village oven", "Dragon breath"], [220, 900])',
        ),
    ),
    "a city floating above the clouds": (
        Chart(
            "The Sky Palace floats 4,100 m up, far above the cloud base.",
            "Heights of the city levels, m",
            'plt.bar(["Cloud base", "Market Ring", "Sky Palace"], [2000, 3200, 4100])',
        ),
        Chart(
            "Two in five travellers reach the city by airship.",
            "How visitors arrive",
            'plt.pie([40, 35, 25], labels=["Airships", "Gliders", "Rope bridges"])',
        ),
        Chart(
            "The city bobs 150 m up and down as warm air rises through the day.",
            "City height over a day",
            "h = np.arange(24)\nplt.plot(h, 3200 + 150 * np.sin(h / 4))",
        ),
    ),
    "a robot learning to paint": (
        Chart(
            "The robot's own score for its paintings climbs from 12 to 83 over ten lessons.",
            "Painting score per lesson",
            "plt.plot(range(1, 11), [12, 18, 25, 31, 40, 47, 58, 66, 74, 83])",
        ),
        Chart(
            "Blue makes up almost half of the paint the robot uses.",
            "Paint used by colour, %",
            'plt.bar(["Blue", "Yellow", "Red", "Green"], [48, 22, 18, 12])',
        ),
        Chart(
            "It draws straight lines perfectly but still struggles with clouds.",
            "Accuracy by shape, %",
            'plt.bar(["Straight lines", "Circles", "Clouds"], [98, 71, 23])',
        ),
    ),
    "a lighthouse keeper who talks to whales": (
        Chart(
            "Whale visits peak in July, when 14 whales swim past the lighthouse.",
            "Whale visits per month",
            'plt.bar(["Jan", "Mar", "May", "Jul", "Sep", "Nov"], [2, 5, 11, 14, 9, 3])',
        ),
        Chart(
            "Half of their conversations are about the weather.",
            "Topics of keeper-whale talks",
            'plt.pie([50, 30, 20], labels=["Weather", "Ships", "Old songs"])',
        ),
        Chart(
            "The whale's greeting rings out loud, then fades over four seconds.",
            "Shape of a whale greeting",
            "t = np.linspace(0, 4, 400)\nplt.plot(t, np.sin(6 * t) * np.exp(-t / 2))",
        ),
    ),
    "a library where books fly": (
        Chart(
            "Poetry books fly fastest; the heavy dictionary barely lifts off.",
            "Flying speed of books, m/s",
            'plt.barh(["Atlas", "Poetry", "Cookbook", "Dictionary"], [9, 14, 6, 2])',
        ),
        Chart(
            "Most books nest up in the dome, far from reading hands.",
            "Books resting on each level",
            'plt.bar(["Ground", "Balcony", "Dome"], [120, 340, 540])',
        ),
        Chart(
            "The air is busiest at midday, when readers call the most books down.",
            "Books in flight by hour",
            "h = np.arange(8, 21)\nplt.plot(h, 30 + 25 * np.sin((h - 8) / 4))",
        ),
    ),
    "a fox detective in a rainy town": (
        Chart(
            "Friday, the day of the theft, was the wettest of the week with 40 mm.",
            "Rain per day this week, mm",
            'plt.bar(["Mon", "Tue", "Wed", "Thu", "Fri"], [12, 30, 25, 8, 40])',
        ),
        Chart(
            "The clues point most strongly at the otter.",
            "Suspicion per suspect, %",
            'plt.bar(["Badger", "Heron", "Otter"], [20, 45, 80])',
        ),
        Chart(
            "The muddy paw prints get closer together near the river.",
            "Gap between paw prints, cm",
            'plt.plot([1, 2, 3, 4, 5], [60, 48, 35, 22, 10], "o-")',
        ),
    ),
    "a garden on the moon": (
        Chart(
            "Moonmint grows best in the low gravity, yielding 55 kg.",
            "Harvest per crop, kg",
            'plt.bar(["Potatoes", "Moonmint", "Star beans", "Tomatoes"], [30, 55, 42, 18])',
        ),
        Chart(
            "Sunflowers grow three times taller on the moon than on Earth.",
            "Sunflower height in m",
            'plt.bar(["On Earth", "On the moon"], [2, 6])',
        ),
        Chart(
            "The glass dome keeps the garden between 16 and 24 degrees while the moon freezes outside.",
            "Temperature under the dome",
            'plt.plot(["Dawn", "Noon", "Dusk", "Midnight"], [18, 24, 20, 16])',
        ),
    ),
    "an underwater train station": (
        Chart(
            "The Kelp Line carries the most passengers every day.",
            "Daily passengers per line",
            'plt.bar(["Coral Line", "Kelp Line", "Trench Express"], [340, 520, 150])',
        ),
        Chart(
            "The deep tunnel runs 300 m below the waves.",
            "Depth of each level, m",
            'plt.barh(["Platform", "Ticket hall", "Deep tunnel"], [40, 25, 300])',
        ),
        Chart(
            "Most passengers are fish commuting to the reef.",
            "Who rides the trains",
            'plt.pie([60, 25, 15], labels=["Fish", "Divers", "Mermaids"])',
        ),
    ),
    "a time-travelling teapot": (
        Chart(
            "The teapot poured the most cups on its trip to the year 2200.",
            "Cups poured per visit",
            'plt.barh(["1066", "1492", "1851", "2200"], [3, 5, 2, 7])',
        ),
        Chart(
            "It spends more time in the past than in the future, and a quarter simply in Tuesday.",
            "Where the teapot spends its time",
            'plt.pie([40, 35, 25], labels=["Past", "Future", "Tuesday"])',
        ),
        Chart(
            "Its five jumps zigzag across more than a thousand years.",
            "Year visited on each jump",
            'plt.plot([1, 2, 3, 4, 5], [1851, 1066, 2200, 1492, 2024], "o-")',
        ),
    ),
    "a village of mushroom houses": (
        Chart(
            "Toadstool Hall is the tallest house in the village at 6 m.",
            "Height of the houses, m",
            'plt.bar(["Toadstool Hall", "Morel Cottage", "Puffball Inn"], [6, 3, 4])',
        ),
        Chart(
            "After the spring rain, a new house grows to full size in about eight weeks.",
            "A new house growing, m",
            "w = np.linspace(0, 8)\nplt.plot(w, 4 * (1 - np.exp(-w / 2)))",
        ),
        Chart(
            "Snails are the biggest family in the village.",
            "Villagers by kind",
            'plt.pie([12, 8, 5], labels=["Snails", "Mice", "Beetles"])',
        ),
    ),
    "a cat who captains a pirate ship": (
        Chart(
            "The crew hauled in more fish than gold.",
            "Loot from this voyage",
            'plt.bar(["Gold coins", "Fish", "Yarn balls"], [120, 340, 75])',
        ),
        Chart(
            "The captain took eight naps on stormy Tuesday.",
            "Naps the captain took daily",
            'plt.plot(["Mon", "Tue", "Wed", "Thu"], [3, 8, 5, 1])',
        ),
        Chart(
            "Half the crew are cats, but a lone dog swabs the deck.",
            "Who sails on the ship, %",
            'plt.pie([50, 30, 20], labels=["Cats", "Parrots", "One dog"])',
        ),
    ),
    "a winter festival of ice lanterns": (
        Chart(
            "Star lanterns are the favourite, with 80 carved this year.",
            "Lanterns carved by shape",
            'plt.bar(["Star", "Fish", "Dragon", "Moon"], [80, 45, 12, 60])',
        ),
        Chart(
            "The night grows colder as it goes on, keeping every lantern solid.",
            "Air temperature through the evening",
            "h = np.linspace(17, 23)\nplt.plot(h, -5 - 3 * np.sin((h - 17) / 4))",
        ),
        Chart(
            "The crowd peaks on the sixth night with 2,400 visitors.",
            "Visitors per festival night",
            "plt.plot([1, 2, 3, 4, 5, 6, 7], [500, 900, 1300, 1200, 1800, 2400, 2000])",
        ),
    ),
    "a clockwork forest": (
        Chart(
            "Each silver pine turns on about 200 gears.",
            "Gears per kind of tree",
            'plt.bar(["Brass oak", "Copper birch", "Silver pine"], [120, 80, 200])',
        ),
        Chart(
            "The forest ticks fastest at midnight and slows to a crawl at noon.",
            "Ticks per minute over a day",
            "t = np.linspace(0, 24)\nplt.plot(t, 50 + 40 * np.cos(np.pi * t / 12))",
        ),
        Chart(
            "Most trees are freshly wound, but 15% have stopped.",
            "State of the forest clocks",
            'plt.pie([55, 30, 15], labels=["Wound", "Slowing", "Stopped"])',
        ),
    ),
    "a giant who knits clouds": (
        Chart(
            "The giant knits 14 fluffy cumulus clouds a week.",
            "Clouds knitted per week",
            'plt.bar(["Cumulus", "Cirrus", "Storm"], [14, 6, 3])',
        ),
        Chart(
            "Pink wool, saved for sunsets, is only 15% of the basket.",
            "Wool in the basket",
            'plt.pie([60, 25, 15], labels=["White wool", "Grey wool", "Pink wool"])',
        ),
        Chart(
            "The giant's sky scarf grows to 20 km by Friday.",
            "Scarf length per day, km",
            'plt.plot(["Mon", "Tue", "Wed", "Thu", "Fri"], [2, 5, 9, 14, 20])',
        ),
    ),
    "a desert market at the end of the world": (
        Chart(
            "Lost socks fill the most stalls; starlight is the rarest ware.",
            "Stalls per kind of ware",
            'plt.barh(["Spice", "Maps", "Lost socks", "Starlight"], [40, 12, 85, 3])',
        ),
        Chart(
            "The market is busiest at midnight, when the sand is cool.",
            "Traders at each time of day",
            'plt.bar(["Dawn", "Noon", "Dusk", "Midnight"], [20, 5, 60, 90])',
        ),
        Chart(
            "Half the traders arrive by camel.",
            "How traders reach the market",
            'plt.pie([50, 30, 20], labels=["Camels", "Sand ships", "On foot"])',
        ),
    ),
    "a school for young wizards in the mountains": (
        Chart(
            "Snow magic is the most popular class, with 40 pupils.",
            "Pupils per class",
            'plt.bar(["Potions", "Flying", "Charms", "Snow magic"], [24, 31, 18, 40])',
        ),
        Chart(
            "A first-year learns 35 spells by May.",
            "Spells learned through the year",
            'plt.plot(["Sep", "Nov", "Jan", "Mar", "May"], [3, 12, 20, 27, 35])',
        ),
        Chart(
            "One spell in ten still turns something into a frog.",
            "How first-year spells turn out",
            'plt.pie([70, 20, 10], labels=["Worked", "Fizzled", "Frog"])',
        ),
    ),
    "a hot-air balloon race over the sea": (
        Chart(
            "Blue Gull won, crossing the sea in 3.8 hours.",
            "Finishing time per balloon, hours",
            'plt.barh(["Red Comet", "Blue Gull", "Gold Finch"], [4.2, 3.8, 5.1])',
        ),
        Chart(
            "The balloons climb to about 500 m, riding warm air over the islands.",
            "Altitude during the race, m",
            "t = np.linspace(0, 4)\nplt.plot(t, 300 + 200 * np.sin(t) + 50 * t)",
        ),
        Chart(
            "The route runs 90 km, past a lighthouse and a lonely island.",
            "Distance to each checkpoint, km",
            'plt.bar(["Start", "Lighthouse", "Island", "Finish"], [0, 25, 60, 90])',
        ),
    ),
    "a snail who wants to fly": (
        Chart(
            "Riding the kite, the snail reached 30 m, its highest flight.",
            "Heights the snail reached, m",
            'plt.bar(["Leaf", "Fence", "Kite"], [0.1, 1.5, 30])',
        ),
        Chart(
            "Each try lasts longer: 15 seconds in the air on the sixth attempt.",
            "Seconds aloft per attempt",
            "plt.plot([1, 2, 3, 4, 5, 6], [0, 2, 1, 5, 8, 15])",
        ),
        Chart(
            "Most of the snail's day is still crawling, but dreaming takes a third.",
            "How the snail spends its day",
            'plt.pie([60, 35, 5], labels=["Crawling", "Dreaming", "Flying"])',
        ),
    ),
    "an orchestra of animals": (
        Chart(
            "Thirty crickets play the strings, and one elephant plays the tuba.",
            "Musicians by kind",
            'plt.bar(["Frogs", "Birds", "Crickets", "Elephant"], [12, 20, 30, 1])',
        ),
        Chart(
            "The mouse sings highest, far above the elephant's rumble.",
            "Pitch of each singer, Hz",
            'plt.barh(["Elephant", "Frog", "Nightingale", "Mouse"], [20, 200, 2000, 20000], log=True)',
        ),
        Chart(
            "The symphony swells to a thunderous finale.",
            "Loudness through the symphony",
            "t = np.linspace(0, 10, 300)\nplt.plot(t, np.abs(np.sin(t)) * t)",
        ),
    ),
    "a castle made of glass": (
        Chart(
            "The sunny south wall holds 1,500 glass panes.",
            "Glass panes per wall",
            'plt.bar(["North", "East", "South", "West"], [1200, 900, 1500, 800])',
        ),
        Chart(
            "Sunlight warms the halls to 30 degrees by early afternoon.",
            "Temperature in the halls by hour",
            "h = np.arange(6, 21)\nplt.plot(h, 20 + 10 * np.sin((h - 6) / 4.5))",
        ),
        Chart(
            "Only 5% of the glass is rainbow glass, saved for the throne room.",
            "Kinds of glass in the castle",
            'plt.pie([85, 10, 5], labels=["Clear", "Frosted", "Rainbow"])',
        ),
    ),
    "a mountain that sings at dawn": (
        Chart(
            "The song is loudest at first light and echoes away within minutes.",
            "The dawn song and its echo",
            "t = np.linspace(0, 6, 300)\nplt.plot(t, np.sin(3 * t) * np.exp(-t / 3))",
        ),
        Chart(
            "Its song peaks at 6 am, just as the sun clears the ridge.",
            "Loudness of the song by hour",
            'plt.plot(["4 am", "5 am", "6 am", "7 am", "8 am"], [0, 40, 95, 60, 10])',
        ),
        Chart(
            "In summer it sings for 45 minutes; in winter, barely five.",
            "Minutes of song per season",
            'plt.bar(["Spring", "Summer", "Autumn", "Winter"], [30, 45, 20, 5])',
        ),
    ),
    "a postman delivering letters to the stars": (
        Chart(
            "Polaris, the North Star, gets the most mail: 300 letters a night.",
            "Letters per star each night",
            'plt.barh(["Sirius", "Vega", "Polaris", "Betelgeuse"], [120, 85, 300, 40])',
        ),
        Chart(
            "Most letters are wishes; a fifth are complaints about clouds.",
            "What the letters say",
            'plt.pie([45, 35, 20], labels=["Wishes", "Thank-you notes", "Complaints"])',
        ),
        Chart(
            "His route stretches 100 light-years by the fifth stop.",
            "Distance along the route, light-years",
            "plt.plot([1, 2, 3, 4, 5], [10, 25, 45, 70, 100])",
        ),
    ),
    "a river made of honey": (
        Chart(
            "In winter the honey river slows to half a centimetre per second.",
            "Flow speed by season, cm/s",
            'plt.bar(["Spring", "Summer", "Autumn", "Winter"], [3, 5, 2, 0.5])',
        ),
        Chart(
            "Ants are the river's most frequent visitors, 900 a day.",
            "Visitors to the river per day",
            'plt.bar(["Bears", "Bees", "Children", "Ants"], [40, 300, 25, 900])',
        ),
        Chart(
            "The river thins from 8 cm deep at the hive spring to barely 1 cm at the sea.",
            "Depth along the river, cm",
            "x = np.linspace(0, 20)\nplt.plot(x, 8 * np.exp(-x / 10))",
        ),
    ),
    "a tiny kingdom inside a teacup": (
        Chart(
            "More than half the kingdom is the warm tea lake.",
            "Land and lake of the kingdom",
            'plt.pie([55, 25, 20], labels=["Tea lake", "Sugar hills", "Biscuit plains"])',
        ),
        Chart(
            "The king stands a full 2 mm tall, the tallest in the kingdom.",
            "Heights of the royal court, mm",
            'plt.bar(["King", "Queen", "Knight", "Baker"], [2, 1.8, 1.5, 1.2])',
        ),
        Chart(
            "The tea lake cools from 80 to about 23 degrees within an hour.",
            "Tea lake temperature over an hour",
            "t = np.linspace(0, 60)\nplt.plot(t, 20 + 60 * np.exp(-t / 20))",
        ),
    ),
    "a knight afraid of the dark": (
        Chart(
            "His fear climbs steadily as the sun sets.",
            "Fear of the knight by hour",
            "plt.plot([18, 19, 20, 21, 22], [2, 4, 7, 9, 10])",
        ),
        Chart(
            "Moonlight gives the knight the most courage.",
            "Courage from each light",
            'plt.bar(["Torch", "Candle", "Firefly jar", "Moon"], [60, 20, 45, 80])',
        ),
        Chart(
            "He happily fights dragons by day, but only three by night.",
            "Dragons fought by day and night",
            'plt.bar(["Day", "Night"], [12, 3])',
        ),
    ),
    # --- mixed prompts, keyed by the full prompt --------------------------------------------------------------------
    "A lesson on photosynthesis for ten-year-olds, with a real photo of a leaf and a chart of sunlight "
    "versus growth.": (
        Chart(
            "Plants grow faster with more light, until extra light stops helping.",
            "Growth against amount of sunlight",
            "light = np.linspace(0, 100)\nplt.plot(light, 10 * light / (light + 20))",
        ),
        Chart(
            "A bean plant in full sun grew 8 cm in a week, four times as much as in shade.",
            "Bean plant growth in one week, cm",
            'plt.bar(["Shade", "Half sun", "Full sun"], [2, 5, 8])',
        ),
        Chart(
            "Six carbon dioxide and six water molecules make one sugar and six oxygen molecules.",
            "Molecules in and out",
            'plt.bar(["CO2 in", "Water in", "Sugar out", "Oxygen out"], [6, 6, 1, 6])',
        ),
    ),
    "A guide to the solar system with a real photo of Saturn and a chart of planet sizes.": (
        Chart(
            "Jupiter is about 11 times as wide as Earth.",
            "Planet diameters, thousand km",
            'plt.bar(["Me", "Ve", "Ea", "Ma", "Ju", "Sa", "Ur", "Ne"], [4.9, 12.1, 12.7, 6.8, 140, 116, 51, 49])',
        ),
        Chart(
            "Saturn's main rings span about 273,000 km, more than twice the planet's width.",
            "Saturn and its rings, thousand km",
            'plt.bar(["Saturn", "Main rings"], [116, 273])',
        ),
        Chart(
            "Jupiter has over 300 times Earth's mass, more than twice all the other planets combined.",
            "Planet masses, Earth = 1",
            'plt.bar(["Earth", "Uranus", "Neptune", "Saturn", "Jupiter"], [1, 14.5, 17.1, 95.2, 317.8])',
        ),
    ),
    "A pitch for a fantasy theme park: a picture of the entrance and a chart of expected visitors per month.": (
        Chart(
            "We expect 130,000 visitors in August, with a second peak at Halloween.",
            "Expected visitors per month, thousands",
            'plt.bar(["Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct"], [40, 55, 80, 120, 130, 70, 90])',
        ),
        Chart(
            "The Dragon Coaster should draw over a third of our guests' time.",
            "Where guests spend their time",
            'plt.pie([35, 25, 25, 15], labels=["Dragon Coaster", "Castle", "Fairy Woods", "Shops"])',
        ),
        Chart(
            "The first season adds up to 585,000 expected visitors.",
            "Visitors so far, thousands",
            "plt.plot(range(1, 8), np.cumsum([40, 55, 80, 120, 130, 70, 90]))",
        ),
    ),
    "Introduce the Arctic fox with a real photo, then imagine it in a cartoon style.": (
        Chart(
            "Arctic foxes can have up to 25 pups in a litter, the most of any carnivore.",
            "Typical and largest litter size",
            'plt.bar(["Typical litter", "Largest litters"], [7, 25])',
        ),
        Chart(
            "Its bushy 30 cm tail doubles as a scarf when it curls up to sleep.",
            "Arctic fox body and tail, cm",
            'plt.bar(["Body", "Tail"], [55, 30])',
        ),
        Chart(
            "Its coat is white for about seven months, blending into the snow.",
            "Months in white and brown coat",
            'plt.pie([7, 5], labels=["White coat", "Brown coat"])',
        ),
    ),
    "Report on coral bleaching with a real photo of a reef and a chart of ocean temperatures.": (
        Chart(
            "Sea surface temperatures in 2023 were about 0.9 °C above the 20th-century average.",
            "Ocean temperature anomaly, °C",
            "plt.plot([1960, 1980, 2000, 2020, 2023], [0.0, 0.1, 0.3, 0.7, 0.9])",
        ),
        Chart(
            "Corals bleach after about 4 degree heating weeks of heat stress; 8 brings severe bleaching.",
            "Heat stress thresholds, degree heating weeks",
            'plt.bar(["Bleaching likely", "Severe bleaching"], [4, 8])',
        ),
        Chart(
            "In a normal year, summer water stays just under the reef's bleaching threshold.",
            "Reef water temperature and threshold",
            "m = np.arange(1, 13)\nplt.plot(m, 26.5 + 2.5 * np.cos((m - 2) * np.pi / 6), m, 0 * m + 30)",
        ),
    ),
    "A recipe blog post about homemade pizza, with an appetising picture and a chart of baking time versus crust.": (
        Chart(
            "The crust crisps fastest between 10 and 12 minutes at 250 °C.",
            "Crust crispness over baking time",
            "t = np.linspace(6, 16)\nplt.plot(t, 100 / (1 + np.exp(-(t - 11))))",
        ),
        Chart(
            "The hotter the oven, the shorter the bake: about 11 minutes at 250 °C.",
            "Minutes to a golden crust",
            'plt.bar(["220 °C", "250 °C", "300 °C"], [15, 11, 6])',
        ),
        Chart(
            "Eleven minutes gave the best crust in our test, before it turned too dark.",
            "Taste score by baking time",
            'plt.bar(["8 min", "11 min", "14 min"], [3, 9, 6])',
        ),
    ),
}
